#!/usr/bin/env python3
"""Confab's message creation under two api settings, side by side: two api processes on the
same backing services and one persister, wrk runs alternating between them (A, B, A, B, ...),
the throughput and p99 of each and the median ratio B/A. For what a setting costs the create
path, e.g. response compression:

  scripts/dev ab-env --a CONFAB_COMPRESS=false --b CONFAB_COMPRESS=true --accept-encoding gzip

Needs what scripts/dev side-by-side needs (a release build, wrk, the backing services). Uses
database confab_side, streams SIDE2_*, Redis prefix side2: and ports 18580-18584 (as
side_by_side.py does: do not run both at once).
"""

import argparse
import os
import statistics
import sys
import time

import pipeline
from pipeline import Proc, backing_pids, wait_ready
from side_by_side import API, API_ADMIN, CONFAB_ENV, PERSISTER, ROOT, measured, millis, post

API_B, API_B_ADMIN = 18583, 18584
SCRIPT = os.path.join(ROOT, "scripts", "wrk", "post_message.lua")


def setting(text):
    name, _, value = text.partition("=")
    if not name or not _:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name, value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", type=setting, action="append", default=[], help="api A's NAME=VALUE")
    ap.add_argument("--b", type=setting, action="append", default=[], help="api B's NAME=VALUE")
    ap.add_argument("--accept-encoding", default="", help="wrk's Accept-Encoding header")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    a = ap.parse_args()
    os.makedirs(pipeline.RUN, exist_ok=True)
    pipeline.reset_confab(CONFAB_ENV)
    if a.accept_encoding:
        os.environ["ACCEPT_ENCODING"] = a.accept_encoding
    api = lambda name, port, admin, extra: Proc(  # noqa: E731
        name, [os.path.join(pipeline.BIN, "confab-api")],
        {"CONFAB_MIGRATE": "false", "CONFAB_HTTP_ADDR": f"127.0.0.1:{port}",
         "CONFAB_ADMIN_ADDR": f"127.0.0.1:{admin}", **dict(extra)}, CONFAB_ENV)
    procs = [api("ab-api-a", API, API_ADMIN, a.a), api("ab-api-b", API_B, API_B_ADMIN, a.b),
             Proc("ab-persister", [os.path.join(pipeline.BIN, "confab-persister")],
                  {"CONFAB_ADMIN_ADDR": f"127.0.0.1:{PERSISTER}"}, CONFAB_ENV)]
    try:
        for port, what in ((API_ADMIN, "api A"), (API_B_ADMIN, "api B"), (PERSISTER, "persister")):
            wait_ready(port, what)
        token = post(f"http://127.0.0.1:{API}/api/v1/applications", {"name": "ab"})["token"]
        for _ in range(100):
            post(f"http://127.0.0.1:{API}/api/v1/applications/{token}/chats", {})
        time.sleep(1)
        by_name = {p.name: p.pid for p in procs}
        backing = backing_pids()
        pids = {"A": {"api": by_name["ab-api-a"]} | backing,
                "B": {"api": by_name["ab-api-b"]} | backing}
        ratios, p99_ratios = [], []
        for round_ in range(1, a.rounds + 1):
            ra = measured(API, SCRIPT, a, token, pids["A"])
            time.sleep(3)
            rb = measured(API_B, SCRIPT, a, token, pids["B"])
            time.sleep(3)
            ratios.append(rb[0] / ra[0])
            p99_ratios.append(millis(rb[2]) / millis(ra[2]))
            print(f"round {round_}  A {ra[0]:8.0f} req/s p99 {ra[2]:>8} api {ra[4]['api']} us/req | "
                  f"B {rb[0]:8.0f} req/s p99 {rb[2]:>8} api {rb[4]['api']} us/req | "
                  f"B/A {ratios[-1]:.3f} p99 x{p99_ratios[-1]:.2f}", flush=True)
        print(f"A {dict(a.a)} B {dict(a.b)} Accept-Encoding {a.accept_encoding!r}: median "
              f"throughput B/A {statistics.median(ratios):.3f}, median p99 B/A "
              f"{statistics.median(p99_ratios):.2f}", flush=True)
    finally:
        for p in procs:
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
