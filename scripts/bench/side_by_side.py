#!/usr/bin/env python3
"""Confab's create path beside the bare reference path, for chats or messages, with the CPU each
process spent per request (issue 13, items 1 and 2).

`../shared/bench/side-by-side` is the reference benchmark for message creation. This script runs
the same comparison (the same bare binaries, built from `../shared/bench/bare-path` unmodified,
wrk with 64 connections for 15 s, alternating runs of the plain bare path, the bare path carrying
the guarantee (`GUARANTEE=1`) and Confab, the ratios per round and their medians) and adds:

  * `--what chats`: Confab's chat creation (`POST /applications/{token}/chats`, one application,
    its chat limit checked on every request but never reached) against the bare path numbering
    items under one parent with an empty body, which is the whole of a chat creation there: one
    `INCR` of the parent's key, a publish awaiting its ack, a `201`, and a writer inserting a row;
  * the p99 ratio per round (the target is Confab's p99 <= 1.5 x bare's);
  * every process's CPU microseconds per request during each run, from /proc: the api or the
    bare handler, the persister or the bare writer, and Redis, NATS and MariaDB.

  scripts/dev side-by-side [--what chats|messages] [--rounds 3] [--duration 15] [--indexer-consumer]

`--indexer-consumer` keeps the indexer's durable consumer (nothing acks it here), as
../shared/bench/side-by-side leaves it; without it only the persister's consumer exists.

`--no-live-copy` adds a fourth run per round: a second Confab (database confab_side_nl, streams
SIDE3_*, Redis prefix side3:, ports 18583-18585) whose live stream has its source removed once the
services are up, so no event is copied into it. Live delivery there receives nothing: it is not a
configuration of the product but the ceiling of any redesign of the live stream's copy (issue 33).

Needs MariaDB, Redis, NATS (scripts/dev services), wrk and a release build of the api and the
persister (scripts/dev side-by-side builds them). Uses database confab_side, streams
SIDE2_EVENTS/SIDE2_DLQ, Redis prefix side2:, ports 18580-18582 for Confab; database bare_path,
stream MSGS and port 18590 for the bare path, bare_path_g, GMSGS and 18591 with the guarantee (as ../shared/bench/side-by-side does: do not run
both at once).
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

import pipeline
from pipeline import TICK, Proc, backing_pids, cpu_ticks, mysql, wait_ready

ROOT = pipeline.ROOT
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "bench")
BARE_SRC = os.path.join(SHARED, "bare-path")
BARE_WORK = os.path.join(os.environ.get("TMPDIR", "/tmp"), "confab-side-by-side")
BARE_BIN = os.path.join(BARE_WORK, "target", "release")
API, API_ADMIN, PERSISTER, BARE, BARE_G = 18580, 18581, 18582, 18590, 18591

# The chat limit too is checked on every request and never refuses.
CONFAB_ENV = pipeline.confab_env("confab_side", "side2") | {
    # Only the api and the persister run: no indexer consumer may hold the message events.
    "CONFAB_INDEXER_CONSUMER": "",
    "CONFAB_DEFAULT_MAX_CHATS": str(2**53 - 1)}
# The second Confab of `--no-live-copy`.
NO_LIVE_ENV = pipeline.confab_env("confab_side_nl", "side3") | {
    "CONFAB_INDEXER_CONSUMER": "", "CONFAB_DEFAULT_MAX_CHATS": str(2**53 - 1)}
NL_API, NL_API_ADMIN, NL_PERSISTER = 18583, 18584, 18585

# What wrk posts: (bare path's script, Confab's script) per kind of creation.
SCRIPTS = {
    "messages": (os.path.join(BARE_SRC, "post_msg.lua"),
                 os.path.join(ROOT, "scripts", "wrk", "post_message.lua")),
    "chats": (os.path.join(ROOT, "scripts", "wrk", "bare_one_parent.lua"),
              os.path.join(ROOT, "scripts", "wrk", "create_chat.lua")),
}


def build_bare():
    """Builds the bare path where ../shared/bench/side-by-side builds it (a copy of its source)."""
    src = os.path.join(BARE_WORK, "src")
    subprocess.run(["rm", "-rf", src], check=True)
    os.makedirs(BARE_WORK, exist_ok=True)
    subprocess.run(["cp", "-r", BARE_SRC, src], check=True)
    subprocess.run(["chmod", "-R", "u+w", src], check=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--manifest-path",
                    os.path.join(src, "Cargo.toml")], check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": os.path.join(BARE_WORK, "target")})


def reset(no_live_copy):
    mysql("DROP DATABASE IF EXISTS bare_path; CREATE DATABASE bare_path;"
          "DROP DATABASE IF EXISTS bare_path_g; CREATE DATABASE bare_path_g;")
    pipeline.reset_confab(CONFAB_ENV)
    if no_live_copy:
        pipeline.reset_confab(NO_LIVE_ENV)


def confab_procs(prefix, env, api, admin, persister):
    return [
        Proc(f"{prefix}-api", [os.path.join(pipeline.BIN, "confab-api")],
             {"CONFAB_MIGRATE": "false", "CONFAB_HTTP_ADDR": f"127.0.0.1:{api}",
              "CONFAB_ADMIN_ADDR": f"127.0.0.1:{admin}"}, env),
        Proc(f"{prefix}-persister", [os.path.join(pipeline.BIN, "confab-persister")],
             {"CONFAB_ADMIN_ADDR": f"127.0.0.1:{persister}"}, env),
    ]


def unsource(stream):
    """Removes the live stream's source (the services declared it at start-up, and declare it
    again only when they restart), so no event is copied into it from now on."""
    info = asyncio.run(pipeline.nats_request(4222, f"$JS.API.STREAM.INFO.{stream}"))
    config = info["config"]
    config.pop("sources", None)
    config["subjects"] = [f"{stream.lower()}.unsourced"]
    answer = asyncio.run(pipeline.nats_request(4222, f"$JS.API.STREAM.UPDATE.{stream}",
                                               json.dumps(config).encode()))
    assert "error" not in answer, answer


def setup(api, what):
    """An application (and 100 chats for messages) in the Confab at `api`; its token."""
    token = post(f"http://127.0.0.1:{api}/api/v1/applications", {"name": "side"})["token"]
    if what == "messages":
        for _ in range(100):
            post(f"http://127.0.0.1:{api}/api/v1/applications/{token}/chats", {})
    return token


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def wrk(port, script, connections, duration, token):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script,
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True, env={**os.environ, "TOKEN": token}).stdout
    return pipeline.parse_wrk(out)


def millis(text):
    """wrk's latency (`850.00us`, `4.20ms`, `1.10s`) in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError(text)


def measured(port, script, a, token, pids):
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    rps, p50, p99, ok, bad = wrk(port, script, a.connections, a.duration, token)
    requests = max(ok + bad, 1)
    cpu = {name: round((cpu_ticks(pid) - before[name]) / TICK * 1e6 / requests)
           for name, pid in pids.items()}
    return rps, p50, p99, bad, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--what", choices=sorted(SCRIPTS), default="chats")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--indexer-consumer", action="store_true",
                    help="keep the indexer's consumer (which nothing acks here), as "
                         "../shared/bench/side-by-side does")
    ap.add_argument("--no-live-copy", action="store_true",
                    help="also run a Confab whose live stream copies nothing (a ceiling)")
    a = ap.parse_args()
    if a.indexer_consumer:
        CONFAB_ENV["CONFAB_INDEXER_CONSUMER"] = "side2-indexer"
        NO_LIVE_ENV["CONFAB_INDEXER_CONSUMER"] = "side3-indexer"
    os.makedirs(pipeline.RUN, exist_ok=True)
    print("==> building the bare path", file=sys.stderr, flush=True)
    build_bare()
    reset(a.no_live_copy)
    procs = confab_procs("side", CONFAB_ENV, API, API_ADMIN, PERSISTER)
    if a.no_live_copy:
        procs += confab_procs("side-nl", NO_LIVE_ENV, NL_API, NL_API_ADMIN, NL_PERSISTER)
    bare_db = {"DB": "mysql://root@127.0.0.1:3306/bare_path"}
    try:
        procs.append(Proc("bare-handler", [os.path.join(BARE_BIN, "e2e")],
                          {**bare_db, "ADDR": f"127.0.0.1:{BARE}"}, {}))
        guarantee = {"GUARANTEE": "1", "STREAM": "GMSGS",
                     "DB": "mysql://root@127.0.0.1:3306/bare_path_g"}
        procs.append(Proc("bare-g-handler", [os.path.join(BARE_BIN, "e2e")],
                          {**guarantee, "ADDR": f"127.0.0.1:{BARE_G}"}, {}))
        time.sleep(2)  # the handler (re)creates the stream the writer consumes
        procs.append(Proc("bare-writer", [os.path.join(BARE_BIN, "persister")], bare_db, {}))
        procs.append(Proc("bare-g-writer", [os.path.join(BARE_BIN, "persister")], guarantee, {}))
        wait_ready(API_ADMIN, "api")
        wait_ready(PERSISTER, "persister")
        token = setup(API, a.what)
        if a.no_live_copy:
            wait_ready(NL_API_ADMIN, "api")
            wait_ready(NL_PERSISTER, "persister")
            unsource(NO_LIVE_ENV["CONFAB_LIVE_STREAM"])
            nl_token = setup(NL_API, a.what)
        time.sleep(1)
        backing = backing_pids()
        by_name = {p.name: p.pid for p in procs}

        def pids(handler, writer):
            """The processes whose CPU one run counts: its two, and the backing services."""
            return {"handler/api": by_name[handler], "writer/persister": by_name[writer]} | backing

        bare_pids = pids("bare-handler", "bare-writer")
        bare_g_pids = pids("bare-g-handler", "bare-g-writer")
        confab_pids = pids("side-api", "side-persister")
        if a.no_live_copy:
            nl_pids = pids("side-nl-api", "side-nl-persister")
        bare_script, confab_script = SCRIPTS[a.what]
        ratios, p99_ratios, g_ratios, g_p99_ratios, nl_ratios = [], [], [], [], []
        for round_ in range(1, a.rounds + 1):
            b = measured(BARE, bare_script, a, token, bare_pids)
            time.sleep(3)
            g = measured(BARE_G, bare_script, a, token, bare_g_pids)
            time.sleep(3)
            c = measured(API, confab_script, a, token, confab_pids)
            time.sleep(3)
            runs = [("bare", b), ("bare+g", g), ("confab", c)]
            if a.no_live_copy:
                nl = measured(NL_API, confab_script, a, nl_token, nl_pids)
                time.sleep(3)
                nl_ratios.append(nl[0] / g[0])
                runs.append(("no live copy", nl))
            ratios.append(c[0] / b[0])
            p99_ratios.append(millis(c[2]) / millis(b[2]))
            g_ratios.append(c[0] / g[0])
            g_p99_ratios.append(millis(c[2]) / millis(g[2]))
            print(f"round {round_}  bare {b[0]:8.0f} req/s p50 {b[1]:>8} p99 {b[2]:>8} | "
                  f"bare+guarantee {g[0]:8.0f} req/s p50 {g[1]:>8} p99 {g[2]:>8} | "
                  f"confab {c[0]:8.0f} req/s p50 {c[1]:>8} p99 {c[2]:>8} non-2xx {c[3]} | "
                  f"ratio {ratios[-1]:.2f} p99 x{p99_ratios[-1]:.2f}, to bare+guarantee "
                  f"{g_ratios[-1]:.2f} p99 x{g_p99_ratios[-1]:.2f}", flush=True)
            if a.no_live_copy:
                print(f"    no live copy {nl[0]:8.0f} req/s p50 {nl[1]:>8} p99 {nl[2]:>8} "
                      f"non-2xx {nl[3]} | to bare+guarantee {nl_ratios[-1]:.2f} "
                      f"p99 x{millis(nl[2]) / millis(g[2]):.2f}", flush=True)
            for label, r in runs:
                cpu = r[4]
                print(f"    {label:>12} CPU us/request: "
                      + " ".join(f"{n} {v}" for n, v in cpu.items())
                      + f" total {sum(cpu.values())}", flush=True)
        print(f"{a.what}: median ratio confab/bare {statistics.median(ratios):.2f}, "
              f"median p99 confab/bare {statistics.median(p99_ratios):.2f}; "
              f"confab/bare+guarantee {statistics.median(g_ratios):.2f}, "
              f"p99 {statistics.median(g_p99_ratios):.2f}", flush=True)
        if a.no_live_copy:
            print(f"{a.what}: median ratio confab with no live copy/bare+guarantee "
                  f"{statistics.median(nl_ratios):.2f}", flush=True)
    finally:
        for p in procs:
            p.stop()


if __name__ == "__main__":
    main()
