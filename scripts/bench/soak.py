#!/usr/bin/env python3
"""What JetStream retains while a million messages go through Confab: nats-server's resident
memory and the number of subjects its streams keep, every 100,000 messages.

Meant to be run once per design, each with its own release binaries (`--bin-dir`), and the two
series put side by side with `--compare`:

  * the previous design: the events stream has limits retention and keeps one subject per
    message for 7 days, so subjects (and the per-subject state nats-server holds in memory)
    grow with every message written;
  * the new design: the events stream has interest retention (an event leaves once every
    consumer acked it) and a second "live" stream keeps one subject per chat for an hour, so
    subjects should stay near --chats and memory level off.

Each run has its own nats-server (JetStream in a fresh store, a monitoring port, 127.0.0.1
only), so the memory measured is the run's alone, and runs the api, the persister, the indexer
(embedded index) and the counter reconciler from --bin-dir on a fresh database
confab_soak_<label>, Redis prefix soak_<label>:, streams SOAK_<LABEL>_*. It creates one
application with --chats chats, lifts its rate limit (the limiter runs but never refuses, as in
the other benchmarks), and wrk (scripts/wrk/soak_messages.lua, 64 connections) posts 100-byte
messages until --messages were acknowledged with 201 (the few still in flight then, at most one
per connection, are written too: the final sample's `rows` is the exact count).

Samples, printed and written to --out after each one:
  * `load`: at 0 and every --every messages acknowledged with 201, taken at once while the load
    goes on (the consumers may be behind: the events stream then holds their backlog too);
  * `drained`: once no consumer of any stream has anything pending or unacknowledged (within
    --drain-secs): what the design keeps at rest. `deadline` instead if the run ran out of time.
Each has nats-server's VmRSS, the sum of num_subjects over every stream (/jsz?streams=true), each
stream's subjects, messages and bytes, each consumer's pending counts and the services' VmRSS.

  scripts/dev soak --label new --out new.json          # builds this tree's binaries first
  python3 scripts/bench/soak.py --bin-dir OLD/target/release --label old --out old.json
  python3 scripts/bench/soak.py --compare old.json new.json

Needs MariaDB (127.0.0.1:3306, root), Redis (127.0.0.1:6379), wrk and a nats-server binary:
$CONFAB_NATS_SERVER, else .dev/nats/bin/nats-server, else nats-server on PATH. Logs and the
JetStream store are in .dev/soak/soak_<label>/ (the store and the index are removed at the end).
"""

import argparse
import datetime
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pipeline
from pipeline import confab_env, get, mysql, rss_mb, wait_ready
from side_by_side import post

ROOT = pipeline.ROOT
LUA = os.path.join(ROOT, "scripts", "wrk", "soak_messages.lua")
STALL_SECS = 300  # wrk is stopped if no checkpoint arrives for this long (a lost request)


def free_ports(n):
    """`n` distinct loopback ports free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def spawn(args, log_path, env=None):
    """A process in a session (process group) of its own, logging to `log_path`."""
    with open(log_path, "w") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def stop(p, sig=signal.SIGTERM):
    """Ends `p`'s process group: `sig`, then SIGKILL after 10 s."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass


def nats_server_binary():
    configured = os.environ.get("CONFAB_NATS_SERVER")
    for path in ([configured] if configured else
                 [os.path.join(ROOT, ".dev", "nats", "bin", "nats-server"),
                  shutil.which("nats-server")]):
        if path and os.access(path, os.X_OK):
            return path
    sys.exit(f"no nats-server at {configured or '.dev/nats/bin or on PATH'} (set CONFAB_NATS_SERVER)")


def start_nats(work, port, mport):
    """The run's own nats-server; returns the process and its version."""
    p = spawn([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-m", str(mport),
               "-js", "-sd", os.path.join(work, "store")], os.path.join(work, "nats-server.log"))
    for _ in range(100):
        try:
            return p, json.loads(get(f"http://127.0.0.1:{mport}/varz", 1))["version"]
        except OSError:
            if p.poll() is not None:
                break
            time.sleep(0.1)
    raise RuntimeError(f"nats-server did not start; see {work}/nats-server.log")


def jetstream_state(mport):
    """Every stream's subjects, messages and bytes, and every consumer's pending counts."""
    jsz = json.loads(get(f"http://127.0.0.1:{mport}/jsz?streams=true&consumers=true"))
    streams, consumers = {}, {}
    for account in jsz.get("account_details") or []:
        for s in account.get("stream_detail") or []:
            state = s.get("state", {})  # num_subjects is left out when 0
            streams[s["name"]] = {k: state.get(f, 0) for k, f in
                                  (("subjects", "num_subjects"), ("messages", "messages"),
                                   ("bytes", "bytes"))}
            for c in s.get("consumer_detail") or []:
                consumers[f"{s['name']}/{c['name']}"] = {
                    "pending": c.get("num_pending", 0), "ack_pending": c.get("num_ack_pending", 0)}
    return streams, consumers


def start_services(bin_dir, env, work, ports):
    """The four services; returns {name: (process, admin port)} once all are ready."""
    api, api_admin, persister, indexer, search, reconciler = ports
    specs = {
        "api": (api_admin, {"CONFAB_MIGRATE": "false", "CONFAB_HTTP_ADDR": f"127.0.0.1:{api}"}),
        "persister": (persister, {}),
        "indexer": (indexer, {"CONFAB_SEARCH_ADDR": f"127.0.0.1:{search}",
                              "CONFAB_INDEX_DIR": os.path.join(work, "index")}),
        "counter-reconciler": (reconciler, {}),
    }
    services = {}
    for name, (admin, extra) in specs.items():
        own = {**os.environ, **env, **extra, "CONFAB_ADMIN_ADDR": f"127.0.0.1:{admin}"}
        services[name] = (spawn([os.path.join(bin_dir, f"confab-{name}")],
                                os.path.join(work, f"{name}.log"), own), admin)
    for name, (_, admin) in services.items():
        wait_ready(admin, name)
    return services


class Series:
    """The run's samples: each is printed and the whole record rewritten to `out`."""

    def __init__(self, record, out, mport, pids):
        self.record, self.out, self.mport, self.pids = record, out, mport, pids
        self.t0 = time.monotonic()

    def sample(self, phase, written, **extra):
        streams, consumers = jetstream_state(self.mport)
        s = {"messages": written, "phase": phase, "secs": round(time.monotonic() - self.t0, 1),
             "nats_rss_mb": round(rss_mb(self.pids["nats-server"]), 1),
             "subjects": sum(v["subjects"] for v in streams.values()),
             "streams": streams, "consumers": consumers,
             "rss_mb": {n: round(rss_mb(pid), 1) for n, pid in self.pids.items()
                        if n != "nats-server"}, **extra}
        self.record["samples"].append(s)
        self.save()
        print(f"messages={written} [{phase}] nats_rss_mb={s['nats_rss_mb']:.1f} "
              f"subjects={s['subjects']} ("
              + ", ".join(f"{n}: {v['subjects']}/{v['messages']} msgs {v['bytes'] / 1e6:.1f} MB"
                          for n, v in streams.items())
              + ") pending " + " ".join(f"{n.split('/')[1]}:{c['pending']}+{c['ack_pending']}"
                                        for n, c in consumers.items())
              + " | rss_mb " + " ".join(f"{n}:{mb:.0f}" for n, mb in s["rss_mb"].items())
              + f" | t={s['secs']:.0f}s" + "".join(f" {k}={v}" for k, v in extra.items()),
              flush=True)

    def save(self):
        if self.out:
            with open(self.out + ".tmp", "w") as f:
                json.dump(self.record, f, indent=1)
            os.replace(self.out + ".tmp", self.out)


def write_messages(a, api_port, token, series, deadline):
    """Posts --messages messages with wrk, sampling at each checkpoint the Lua script prints;
    returns the last checkpoint (--messages, or fewer if the deadline came first)."""
    env = {**os.environ, "TOKEN": token, "SOAK_MESSAGES": str(a.messages),
           "SOAK_EVERY": str(a.every), "SOAK_CHATS": str(a.chats)}
    secs = max(1, int(deadline - time.monotonic()))
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{a.connections}", f"-d{secs}s", "--timeout", "30s",
                            "-s", LUA, f"http://127.0.0.1:{api_port}"],
                           stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lines = queue.Queue()

    def read():
        for line in wrk.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    written, summary = 0, []
    try:
        while True:
            try:
                line = lines.get(timeout=STALL_SECS)
            except queue.Empty:
                print(f"no checkpoint for {STALL_SECS} s: stopping wrk", flush=True)
                os.killpg(wrk.pid, signal.SIGINT)
                continue
            if line is None:  # wrk exited: done and stopped, or its -d (the deadline) ran out
                break
            m = re.fullmatch(r"(written|done) (\d+)", line.strip())
            if not m:
                summary.append(line)
            elif m.group(1) == "written":
                written = int(m.group(2))
                series.sample("load", written)
            else:
                os.killpg(wrk.pid, signal.SIGINT)  # wrk prints its summary and exits
    finally:
        stop(wrk)
    series.record["wrk"] = "".join(summary)
    print("".join(summary).rstrip(), flush=True)
    return written


def wait_drained(mport, deadline):
    """True once every consumer of every stream has nothing pending or unacknowledged."""
    while time.monotonic() < deadline:
        _, consumers = jetstream_state(mport)
        if all(c["pending"] == 0 and c["ack_pending"] == 0 for c in consumers.values()):
            return True
        time.sleep(0.5)
    return False


def run(a):
    deadline = time.monotonic() + a.deadline_secs
    name = "soak_" + re.sub(r"[^a-z0-9]+", "_", a.label.lower()).strip("_")
    work = os.path.join(ROOT, ".dev", "soak", name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    port, mport, *service_ports = free_ports(8)
    env = confab_env(f"confab_{name}", name) | {
        "NATS_URL": f"nats://127.0.0.1:{port}",
        "CONFAB_LIVE_STREAM": f"{name.upper()}_LIVE",  # the new design's; the old ignores it
        "CONFAB_DEFAULT_MAX_CHATS": str(2**53 - 1),
        "MIMALLOC_ARENA_EAGER_COMMIT": "0",  # as the images run them (Dockerfile)
    }
    nats, services = None, {}
    try:
        nats, version = start_nats(work, port, mport)
        # The run has a NATS server of its own, with a fresh store: no stream to delete.
        pipeline.reset_confab(env, a.bin_dir, streams=False)
        services = start_services(a.bin_dir, env, work, service_ports)
        api = service_ports[0]
        token = post(f"http://127.0.0.1:{api}/api/v1/applications", {"name": "soak"})["token"]
        for _ in range(a.chats):
            post(f"http://127.0.0.1:{api}/api/v1/applications/{token}/chats", {})
        record = {"label": a.label, "bin_dir": os.path.abspath(a.bin_dir),
                  "nats_server": version, "messages": a.messages, "every": a.every,
                  "chats": a.chats, "connections": a.connections,
                  "started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "samples": []}
        pids = {"nats-server": nats.pid} | {n: p.pid for n, (p, _) in services.items()}
        series = Series(record, a.out, mport, pids)
        print(f"{a.label}: nats-server {version}, {a.chats} chats, {a.messages} messages, "
              f"logs in {work}", flush=True)
        series.sample("load", 0)
        written = write_messages(a, api, token, series, deadline)
        drained = written == a.messages and wait_drained(
            mport, min(deadline, time.monotonic() + a.drain_secs))
        rows = int(mysql(f"SELECT COUNT(*) FROM {env['DATABASE_URL'].rsplit('/', 1)[1]}.messages"))
        series.sample("drained" if drained else "deadline", written, rows=rows)
        record["complete"] = drained
        series.save()
    finally:
        for p, _ in services.values():
            stop(p)
        if nats:
            stop(nats)
        shutil.rmtree(os.path.join(work, "store"), ignore_errors=True)
        shutil.rmtree(os.path.join(work, "index"), ignore_errors=True)


def compare(path_a, path_b):
    """The two runs' series side by side as a markdown table."""
    runs = []
    for path in (path_a, path_b):
        with open(path) as f:
            runs.append(json.load(f))
    rows = {}
    for side, r in enumerate(runs):
        for s in r["samples"]:
            rows.setdefault((s["messages"], s["phase"]), [None, None])[side] = s
    la, lb = (r["label"] for r in runs)
    print(f"| messages written | RSS {la} (MB) | subjects {la} | RSS {lb} (MB) | subjects {lb} |")
    print("|---:|---:|---:|---:|---:|")
    for (messages, phase), pair in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] != "load")):
        cells = [f"{messages:,}" + ("" if phase == "load" else f" ({phase})")]
        for s in pair:
            cells += ["–", "–"] if s is None else [f"{s['nats_rss_mb']:.0f}", f"{s['subjects']:,}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nRSS: nats-server's VmRSS; subjects: num_subjects summed over every stream; "
          f"nats-server {runs[0].get('nats_server')} / {runs[1].get('nats_server')}.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--bin-dir", help="directory with the four release binaries of one design")
    ap.add_argument("--label", help="the run's name (old, new): database, prefixes, table column")
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=100_000, help="messages between samples")
    ap.add_argument("--chats", type=int, default=100)
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--out", help="FILE.json: the run's series, rewritten after every sample")
    ap.add_argument("--deadline-secs", type=int, default=1800, help="the whole run at most")
    ap.add_argument("--drain-secs", type=int, default=600, help="waiting for the consumers at most")
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                    help="print two runs' series side by side (markdown) and exit")
    a = ap.parse_args()
    if a.compare:
        return compare(*a.compare)
    if not (a.bin_dir and a.label):
        ap.error("--bin-dir and --label are required (or --compare A.json B.json)")
    if a.messages < 1 or a.every < 1 or a.chats < 1:
        ap.error("--messages, --every and --chats must be positive")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (scripts/dev soak installs it)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally clauses run
    run(a)


if __name__ == "__main__":
    main()
