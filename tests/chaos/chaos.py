#!/usr/bin/env python3
"""Confab chaos suite: fault injection against the real binaries, then an audit of every
acknowledged write.

Each scenario starts its own private MariaDB, Redis and NATS (JetStream) on free loopback ports
under a temporary directory, runs the real `confab-api` (two replicas), `confab-persister`,
`confab-indexer` and `confab-counter-reconciler` binaries as separate OS processes, drives
concurrent writers against both api replicas while it SIGKILLs and restarts processes, and then
checks MySQL (through the `mysql` CLI) and the search API against what the writers were told.

Only the Python standard library is used; all traffic goes to 127.0.0.1. See README.md beside
this file for the scenarios, the options and how to read the summary lines. This file is the
entry point (options, prerequisites, the run and its exit status); the suite itself is the
confab_chaos package beside it (its __init__.py lists the modules).

    python3 tests/chaos/chaos.py --short --scenario all
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

# The suite's modules live in confab_chaos/ beside this file. Python puts a script's directory
# first on sys.path, but not under -P or PYTHONSAFEPATH, so make sure of it.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from confab_chaos.environment import BINARY_OF  # noqa: E402
from confab_chaos.harness import (Options, log, nats_server_problem,  # noqa: E402
                                  redis_cluster_problem, which)
from confab_chaos.processes import kill_all_children  # noqa: E402
from confab_chaos.scenarios import SCENARIOS, run_scenario  # noqa: E402

REPO_ROOT = HERE.parents[1]


def parse_args(argv: List[str]) -> Tuple[Options, List[str]]:
    parser = argparse.ArgumentParser(
        description="Confab chaos suite: SIGKILL and restart the real services and backing "
                    "servers under concurrent writes, then audit every acknowledged write.")
    parser.add_argument("--scenario", default="all", choices=SCENARIOS + ("all",))
    parser.add_argument("--bin-dir", default="target/debug",
                        help="directory of the confab-* binaries (relative to the working "
                             "directory or the repository root; default target/debug)")
    parser.add_argument("--writers", type=int, default=16, help="concurrent writers (16)")
    parser.add_argument("--duration", type=float,
                        help="seconds of load per scenario (default 45/30/45/45, "
                             "--short 30/15/24/30)")
    parser.add_argument("--short", action="store_true", help="CI-sized durations")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument("--seed", type=int, default=1)
    # Longer than the api's own request timeout (CONFAB_REQUEST_TIMEOUT_MS, 10 s), so that its
    # 503 `timeout` answers are seen rather than cut off by the client.
    parser.add_argument("--request-timeout", type=float, default=12.0,
                        help="seconds per HTTP attempt (12)")
    parser.add_argument("--retries", type=int, default=6,
                        help="retries of a failed request, same Idempotency-Key (6)")
    parser.add_argument("--search-sample", type=int, default=300,
                        help="messages whose search is checked (300)")
    parser.add_argument("--audit-timeout", type=float,
                        help="seconds the audit waits for the persister (default 120, --short 60)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for every service (repeatable)")
    args = parser.parse_args(argv)

    bin_dir = Path(args.bin_dir)
    if not bin_dir.is_absolute():
        bin_dir = bin_dir if (Path.cwd() / bin_dir).is_dir() else REPO_ROOT / bin_dir
    extra_env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env wants NAME=VALUE, got {item!r}")
        extra_env[name] = value
    opts = Options(bin_dir=bin_dir.resolve(), writers=args.writers, short=args.short,
                   duration=args.duration, keep=args.keep, seed=args.seed,
                   request_timeout=args.request_timeout, retries=args.retries,
                   search_sample=args.search_sample, audit_timeout=args.audit_timeout,
                   extra_env=extra_env)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    return opts, names


def check_prerequisites(opts: Options, names: List[str]) -> List[str]:
    problems = []
    # nats-server: CONFAB_NATS_SERVER, else on PATH, else /usr/sbin; 2.10 or later.
    nats_problem = nats_server_problem()
    if nats_problem is not None:
        problems.append(nats_problem)
    # redis-cluster: redis-cli, and redis-server 7.0 or later.
    if "redis-cluster" in names:
        redis_problem = redis_cluster_problem()
        if redis_problem is not None:
            problems.append(redis_problem)
    for tool, fallbacks in (("redis-server", ()), ("mariadbd", ("/usr/sbin/mariadbd",)),
                            ("mariadb-install-db", ("/usr/bin/mariadb-install-db",)),
                            ("mysql", ())):
        if which(tool, *fallbacks) is None:
            problems.append(f"{tool} not found (scripts/dev chaos installs it)")
    for binary in sorted(set(BINARY_OF.values())):
        if not os.access(opts.bin_dir / binary, os.X_OK):
            problems.append(f"{opts.bin_dir / binary} missing (cargo build --bin {binary})")
    return problems


async def main_async(opts: Options, names: List[str], tmp_root: Path) -> int:
    # Ctrl-C, SIGTERM and SIGHUP cancel the run, so every `finally` (the writers, each
    # scenario's teardown) runs in order; main() then kills whatever is left.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, main_task.cancel)
    failed = []
    for name in names:
        if not await run_scenario(name, opts, tmp_root):
            failed.append(name)
    # A closing line in the plain "N passed, N failed" form that CI runners read.
    print(f"chaos: {len(names) - len(failed)} passed, {len(failed)} failed", flush=True)
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    log("all scenarios passed")
    return 0


def main(argv: List[str]) -> int:
    opts, names = parse_args(argv)
    problems = check_prerequisites(opts, names)
    if problems:
        for problem in problems:
            log(f"cannot run: {problem}")
        return 2
    tmp_root = Path(tempfile.mkdtemp(prefix="confab-chaos-"))
    try:
        return asyncio.run(main_async(opts, names, tmp_root))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        return 130
    finally:
        kill_all_children()
        if opts.keep:
            log(f"kept {tmp_root}")
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
