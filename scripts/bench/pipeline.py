#!/usr/bin/env python3
"""The whole pipeline against the api + persister alone (issue 13, items 3-5).

Alternating runs of the same wrk load (64 connections, 100-byte messages over 100 chats, the
`scripts/wrk/post_message.lua` script the side-by-side benchmark uses) against

  * `api+persister`: the api and the persister, and
  * `pipeline`: the api, the persister, the indexer (embedded backend) and the counter
    reconciler,

each run on a fresh database, stream, Redis prefix and index, so no run inherits another's
backlog. After the load stops, the run waits until every consumer has caught up (every
acknowledged message is a row, indexed, and counted), and reports:

  * throughput and latency (wrk), and the pipeline/api+persister ratio per round;
  * persistence, index and counter lag p50/p99, read from the services' own histograms (the
    values are bucket upper bounds);
  * every process's CPU per request over the load, and each consumer's CPU-seconds per 10,000
    messages from the start of the load until it caught up;
  * every Confab process's peak resident memory.

`--long SECS` adds one pipeline run of that length that samples resident memory every 5 s, to
show whether it stays bounded.

Run through `scripts/dev pipeline-bench` (it builds the release binaries first):

  scripts/dev pipeline-bench [--rounds 3] [--duration 15] [--connections 64] [--long 0]

Needs MariaDB, Redis, NATS (scripts/dev services) and wrk. Uses database confab_pipeline, streams
PIPE_EVENTS/PIPE_DLQ, Redis prefix pipe:, ports 18680-18685; deletes them before each run.
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "chaos"))
from confab_chaos.clients import MySQL, nats_request  # noqa: E402  (the chaos suite's clients)
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
RUN = os.path.join(ROOT, ".dev", "pipeline-bench")
DB = "confab_pipeline"
API, API_ADMIN, PERSISTER, INDEXER, SEARCH, RECONCILER = 18680, 18681, 18682, 18683, 18684, 18685
TICK = os.sysconf("SC_CLK_TCK")


def confab_env(db, name):
    """The services' environment for a benchmark of its own: database `db`, streams
    `{NAME}_EVENTS`/`{NAME}_DLQ`/`{NAME}_LIVE`, subject prefix `name`, Redis prefix `name:`."""
    return {
        "DATABASE_URL": f"mysql://root@127.0.0.1:3306/{db}",
        "CONFAB_STREAM": f"{name.upper()}_EVENTS",
        "CONFAB_DLQ_STREAM": f"{name.upper()}_DLQ",
        "CONFAB_LIVE_STREAM": f"{name.upper()}_LIVE",
        "CONFAB_SUBJECT_PREFIX": name,
        "CONFAB_REDIS_PREFIX": f"{name}:",
        "CONFAB_PERSISTER_CONSUMER": f"{name}-persister",
        "CONFAB_INDEXER_CONSUMER": f"{name}-indexer",
        "RUST_LOG": "warn",
        # The limiter runs its script on every request but never refuses (as in side-by-side).
        "CONFAB_DEFAULT_MESSAGES_PER_SECOND": "10000000",
        "CONFAB_DEFAULT_MESSAGE_BURST": "10000000",
    }


ENV = confab_env(DB, "pipe") | {"MIMALLOC_ARENA_EAGER_COMMIT": "0"}


def mysql(sql):
    """The first column of the first row of `sql` (the chaos suite's `mysql` CLI client)."""
    rows = asyncio.run(MySQL(3306).query(sql))
    return rows[0][0] if rows and rows[0] else ""


def nats_delete_stream(name):
    """Deletes a JetStream stream (a missing one is fine: the reply says so)."""
    asyncio.run(nats_request(4222, f"$JS.API.STREAM.DELETE.{name}"))


def reset_confab(env, bin_dir=None, streams=True):
    """Empties what the services with environment `env` (from `confab_env`) keep: their
    database (migrated again with `bin_dir`'s confab-api, BIN's by default), streams on the
    shared NATS (unless `streams` is false: a benchmark with a server of its own) and Redis
    keys."""
    db = env["DATABASE_URL"].rsplit("/", 1)[1]
    mysql(f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};")
    for stream in ("CONFAB_STREAM", "CONFAB_DLQ_STREAM", "CONFAB_LIVE_STREAM"):
        if streams and stream in env:
            nats_delete_stream(env[stream])
    keys = subprocess.run(["redis-cli", "--scan", "--pattern", env["CONFAB_REDIS_PREFIX"] + "*"],
                          capture_output=True, text=True, check=True).stdout.split()
    for i in range(0, len(keys), 500):
        subprocess.run(["redis-cli", "del", *keys[i:i + 500]], check=True, capture_output=True)
    subprocess.run([os.path.join(bin_dir or BIN, "confab-api"), "migrate"], check=True,
                   env={**os.environ, **env}, capture_output=True)


def reset():
    subprocess.run(["rm", "-rf", os.path.join(RUN, "index")], check=True)
    reset_confab(ENV)


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_ready(port, what):
    for _ in range(200):
        try:
            get(f"http://127.0.0.1:{port}/readyz", 1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready")


class Proc:
    """A process started with `base` (this benchmark's services' environment by default) and
    `env` over the inherited environment, logging to RUN/<name>.log."""

    def __init__(self, name, args, env, base=None):
        self.name = name
        self.log = open(os.path.join(RUN, name + ".log"), "w")
        base = ENV if base is None else base
        self.p = subprocess.Popen(args, env={**os.environ, **base, **env},
                                  stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.p.pid

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:  # the process has exited
        pass
    return 0.0


def backing_pids():
    pids = {}
    for name, proc in (("nats", "nats-server"), ("mariadb", "mariadbd"), ("redis", "redis-server")):
        out = subprocess.run(["pgrep", "-x", proc], capture_output=True, text=True).stdout.split()
        if out:
            pids[name] = int(out[0])
    return pids


def histogram_quantiles(text, name, qs=(0.5, 0.99)):
    """Quantiles (bucket upper bounds) of histogram `name`, summed over its label sets."""
    buckets = {}
    pattern = re.compile(rf'^{name}_bucket{{(.*)}} (\S+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            buckets[float(le)] = buckets.get(float(le), 0) + float(m.group(2))
    if not buckets:
        return None
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    if total == 0:
        return None
    result = []
    for q in qs:
        for le, count in ordered:
            if count >= q * total:
                result.append(le)
                break
    return result


def wrk(connections, duration, token):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         "-s", os.path.join(ROOT, "scripts", "wrk", "post_message.lua"),
         f"http://127.0.0.1:{API}"],
        capture_output=True, text=True, check=True, env={**os.environ, "TOKEN": token}).stdout
    return parse_wrk(out)


def parse_wrk(out):
    """Throughput, p50, p99, 2xx responses and other responses from wrk's `--latency` output."""
    rps = float(re.search(r"Requests/sec:\s+(\S+)", out).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p50, p99, requests - (int(bad.group(1)) if bad else 0), int(bad.group(1)) if bad else 0


def caught_up(pipeline, created, deadline):
    """Waits until every created message is a row (and, with the pipeline, indexed and counted);
    returns the time each consumer caught up, relative to now."""
    start, done = time.monotonic(), {}
    while time.monotonic() - start < deadline:
        now = time.monotonic() - start
        if "persister" not in done and int(mysql(f"SELECT COUNT(*) FROM {DB}.messages")) >= created:
            done["persister"] = now
        if pipeline and "indexer" not in done:
            text = get(f"http://127.0.0.1:{INDEXER}/metrics")
            indexed = sum(float(x) for x in re.findall(
                r'^confab_index_lag_seconds_count{[^}]*type="message.created"[^}]*} (\S+)$',
                text, re.M))
            if indexed >= created:
                done["indexer"] = now
        if pipeline and "persister" in done and "counter-reconciler" not in done:
            counted = mysql(f"SELECT COALESCE(SUM(messages_count), 0) FROM {DB}.chats")
            if int(counted) >= created:
                done["counter-reconciler"] = now
        if len(done) == (3 if pipeline else 1):
            return done
        time.sleep(0.05)
    raise RuntimeError(f"consumers did not catch up within {deadline} s: {done}")


def one_run(mode, connections, duration, sample_every=1.0):
    pipeline = mode == "pipeline"
    reset()
    # Without an indexer, no service may create its consumer: the events stream would keep
    # every message event for it.
    alone = {} if pipeline else {"CONFAB_INDEXER_CONSUMER": ""}
    procs = [
        Proc("api", [os.path.join(BIN, "confab-api")],
             {"CONFAB_MIGRATE": "false", "CONFAB_HTTP_ADDR": f"127.0.0.1:{API}",
              "CONFAB_ADMIN_ADDR": f"127.0.0.1:{API_ADMIN}"} | alone),
        Proc("persister", [os.path.join(BIN, "confab-persister")],
             {"CONFAB_ADMIN_ADDR": f"127.0.0.1:{PERSISTER}"} | alone),
    ]
    if pipeline:
        procs += [
            Proc("indexer", [os.path.join(BIN, "confab-indexer")],
                 {"CONFAB_ADMIN_ADDR": f"127.0.0.1:{INDEXER}",
                  "CONFAB_SEARCH_ADDR": f"127.0.0.1:{SEARCH}",
                  "CONFAB_INDEX_DIR": os.path.join(RUN, "index")}),
            Proc("counter-reconciler", [os.path.join(BIN, "confab-counter-reconciler")],
                 {"CONFAB_ADMIN_ADDR": f"127.0.0.1:{RECONCILER}"}),
        ]
    stop, sampler = threading.Event(), None
    ports = {"api": API_ADMIN, "persister": PERSISTER, "indexer": INDEXER,
             "counter-reconciler": RECONCILER}
    try:
        for p in procs:
            wait_ready(ports[p.name], p.name)
        body = json.dumps({"name": "pipeline-bench"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{API}/api/v1/applications", data=body,
                                     headers={"content-type": "application/json"})
        token = json.loads(urllib.request.urlopen(req).read())["token"]
        for _ in range(100):
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{API}/api/v1/applications/{token}/chats", method="POST"))
        time.sleep(1)
        pids = {p.name: p.pid for p in procs} | backing_pids()
        before = {name: cpu_ticks(pid) for name, pid in pids.items()}
        peak = {p.name: 0.0 for p in procs}
        samples = []

        def sample():
            t0 = time.monotonic()
            while not stop.is_set():
                row = {p.name: rss_mb(p.pid) for p in procs}
                for name, mb in row.items():
                    peak[name] = max(peak[name], mb)
                samples.append((time.monotonic() - t0, row))
                stop.wait(sample_every)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        rps, p50, p99, ok, bad = wrk(connections, duration, token)
        load_end = time.monotonic()
        during = {name: cpu_ticks(pid) - before[name] for name, pid in pids.items()}
        done = caught_up(pipeline, ok, 120)
        stop.set()
        sampler.join()
        total = {p.name: cpu_ticks(p.pid) - before[p.name] for p in procs}
        rows = int(mysql(f"SELECT COUNT(*) FROM {DB}.messages"))
        lags = {"persistence": histogram_quantiles(
            get(f"http://127.0.0.1:{PERSISTER}/metrics"), "confab_persistence_lag_seconds")}
        if pipeline:
            lags["index"] = histogram_quantiles(
                get(f"http://127.0.0.1:{INDEXER}/metrics"), "confab_index_lag_seconds")
            lags["counter"] = histogram_quantiles(
                get(f"http://127.0.0.1:{RECONCILER}/metrics"), "confab_counter_reconcile_lag_seconds")
        requests = ok + bad
        return {
            "mode": mode, "rps": rps, "p50": p50, "p99": p99, "ok": ok, "non2xx": bad,
            "rows": rows, "load_secs": load_end - started,
            "cpu_us_per_request": {n: round(t / TICK * 1e6 / max(requests, 1), 1)
                                   for n, t in during.items()},
            "consumer_cpu_s_per_10k": {n: round(total[n] / TICK / max(rows, 1) * 10_000, 3)
                                       for n in total if n != "api"},
            "caught_up_after_load_s": {n: round(t, 2) for n, t in done.items()},
            "lag_p50_p99_s": lags, "peak_rss_mb": {n: round(v, 1) for n, v in peak.items()},
            "rss_samples": samples,
        }
    finally:
        stop.set()
        if sampler:
            sampler.join()
        for p in procs:
            p.stop()


def show(r):
    lags = "  ".join(f"{k} {v[0]:g}/{v[1]:g} s" if v else f"{k} -"
                     for k, v in r["lag_p50_p99_s"].items())
    print(f"{r['mode']:>14}: {r['rps']:8.0f} req/s p50 {r['p50']:>8} p99 {r['p99']:>8}"
          f" non-2xx {r['non2xx']} | lag p50/p99 {lags}", flush=True)
    print(f"{'':>16}CPU us/request {r['cpu_us_per_request']}", flush=True)
    print(f"{'':>16}consumer CPU-s per 10k messages {r['consumer_cpu_s_per_10k']}"
          f" caught up after load {r['caught_up_after_load_s']} s", flush=True)
    print(f"{'':>16}peak RSS MB {r['peak_rss_mb']}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--long", type=int, default=0, help="one pipeline run of SECS, RSS every 5 s")
    ap.add_argument("--json", help="write every run's figures to this file")
    a = ap.parse_args()
    os.makedirs(RUN, exist_ok=True)
    runs, ratios = [], []
    for round_ in range(1, a.rounds + 1):
        base = one_run("api+persister", a.connections, a.duration)
        time.sleep(3)
        full = one_run("pipeline", a.connections, a.duration)
        time.sleep(3)
        runs += [base, full]
        ratios.append(full["rps"] / base["rps"])
        print(f"round {round_}: pipeline / api+persister = {ratios[-1]:.2f}", flush=True)
        show(base)
        show(full)
    if ratios:
        print(f"median ratio pipeline / api+persister: {statistics.median(ratios):.2f}", flush=True)
    if a.long:
        r = one_run("pipeline", a.connections, a.long, sample_every=5.0)
        runs.append(r)
        print(f"long run ({a.long} s):", flush=True)
        show(r)
        for t, row in r["rss_samples"]:
            print(f"  t={t:6.1f}s " + " ".join(f"{n} {mb:.1f}" for n, mb in row.items()), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
