"""The scenarios: what each starts, which faults it injects on which schedule, for how long,
and how one scenario runs end to end (servers, migration, load and faults, audit, summary)."""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .audit import AuditResult, audit, scrape_numbering_counters
from .environment import SERVICES, Environment
from .faults import Fault, FaultCounter, fault_schedule, kill_and_restart, kill_stream_leader
from .harness import HarnessError, Options, log
from .ledger import Ledger
from .load import (Context, probe_idempotency, run_load, setup_application,
                   wait_chats_persisted, warm_up)
from .report import report_details, summary_fields, summary_line, write_report

SCENARIOS = ("faults", "redis-loss-lagging", "cluster")


@dataclass
class Plan:
    duration: float
    timeouts: Dict[str, float]


def plan(opts: Options, name: str) -> Plan:
    """Durations per scenario; --short fits all three in about four minutes of wall time on two
    cores with debug binaries."""
    full = {"faults": 45, "redis-loss-lagging": 30, "cluster": 45}
    short = {"faults": 30, "redis-loss-lagging": 15, "cluster": 24}
    duration = opts.duration or (short if opts.short else full)[name]
    audit = opts.audit_timeout or (60 if opts.short else 120)
    return Plan(duration, {"persist": audit, "counts": audit / 2, "search": audit / 2})


async def scenario_faults(ctx: Context, p: Plan, counter: FaultCounter) -> None:
    """Single node everything; every process SIGKILLed and restarted in turn while writing."""
    env = ctx.env
    await env.start_services(list(SERVICES))
    env.start_watchdog()
    await setup_application(ctx, chats=4, scenario="faults")
    await wait_chats_persisted(ctx)
    ctx.idempotency = await probe_idempotency(ctx)
    await warm_up(ctx)
    down = 1.0
    faults: List[Fault] = [
        (name, lambda name=name: kill_and_restart(env.procs[name], down, 90))
        for name in ("persister", "api-a", "indexer", "counter-reconciler", "api-b")
    ] + [
        ("redis (restarted empty)", lambda: kill_and_restart(env.procs["redis"], down, 30)),
        ("nats (restarted on its store)", lambda: kill_and_restart(env.procs["nats"], down, 60)),
        ("mariadb", lambda: kill_and_restart(env.procs["mariadb"], down, 90)),
    ]
    # Spread one round of faults over the run (at least 2 s apart, so each restart is hit by
    # load), and keep going round while time remains.
    interval = max(2.0, (p.duration - 2.0) / (len(faults) + 0.5))
    await run_load(ctx, p.duration,
                   lambda end: fault_schedule(faults, 2.0, interval, end, counter))


async def scenario_redis_loss_lagging(ctx: Context, p: Plan, counter: FaultCounter) -> None:
    """The known numbering defect's reproduction: a one-second duplicate window, no persister
    (so MySQL knows no numbers and every event stays in the stream), and Redis losing everything
    every four seconds (after each loss numbering waits out its quiescence, 1.2 s here)."""
    env = ctx.env
    await env.start_services(["api-a", "api-b", "indexer", "counter-reconciler"])
    env.start_watchdog()
    await setup_application(ctx, chats=2, scenario="redis-loss-lagging")
    ctx.idempotency = await probe_idempotency(ctx)
    await warm_up(ctx)
    # Redis stays down longer than the one-second duplicate window, so a number handed out
    # again after the loss can no longer be caught by JetStream's publish-time deduplication:
    # only the re-seeding itself stands between the writers and duplicate numbers.
    faults: List[Fault] = [("redis (restarted empty)",
                            lambda: kill_and_restart(env.procs["redis"], 1.5, 30))]
    await run_load(ctx, p.duration, lambda end: fault_schedule(faults, 3.0, 4.0, end, counter))
    log("starting the persister")
    await env.start_services(["persister"])


async def scenario_cluster(ctx: Context, p: Plan, counter: FaultCounter) -> None:
    """A three-node JetStream cluster with three stream replicas; the stream leader's process is
    SIGKILLed and restarted a few seconds later, a few times while writing."""
    env = ctx.env
    await env.start_services(list(SERVICES))
    env.start_watchdog()
    await setup_application(ctx, chats=4, scenario="cluster")
    await wait_chats_persisted(ctx)
    ctx.idempotency = await probe_idempotency(ctx)
    await warm_up(ctx)
    kills = 2 if ctx.opts.short else 3
    down = 2.0 if ctx.opts.short else 3.0
    interval = p.duration / (kills + 1)
    faults: List[Fault] = [("stream leader", lambda: kill_stream_leader(env, down))]
    await run_load(ctx, p.duration,
                   lambda end: fault_schedule(faults, interval, interval, end, counter, kills))


# Latency every scenario must keep at the 99th percentile, where its fault should cost a quick
# answer rather than a wait: Redis gone costs fast 503s (a reconnect that paused up to 60 s made
# requests hang until their timeout before the api's Redis client was configured not to).
P99_BOUND_MS = {"redis-loss-lagging": 2500.0}


SCENARIO_SETUP = {
    "faults": ({}, 1, scenario_faults),
    # A 1 s publish deadline makes numbering's wait after each Redis loss 1.2 s, so writes
    # resume between losses (Redis is down 1.5 s of every 4 s).
    "redis-loss-lagging": ({"CONFAB_DUPLICATE_WINDOW_SECS": "1",
                            "CONFAB_PUBLISH_DEADLINE_MS": "1000"}, 1, scenario_redis_loss_lagging),
    "cluster": ({"CONFAB_STREAM_REPLICAS": "3"}, 3, scenario_cluster),
}


async def run_scenario(name: str, opts: Options, tmp_root: Path) -> bool:
    """Runs one scenario end to end and prints its summary line; True when it passed."""
    started = time.monotonic()
    scenario_env, nats_nodes, body = SCENARIO_SETUP[name]
    root = tmp_root / name
    root.mkdir(parents=True)
    log(f"=== scenario {name} (logs in {root}) ===")
    env = Environment(opts, root, scenario_env, nats_nodes)
    ledger = Ledger()
    ctx = Context(env, opts, ledger)
    counter = FaultCounter()
    p = plan(opts, name)
    result: Optional[AuditResult] = None
    error: Optional[str] = None
    try:
        await env.servers.start()
        await env.migrate()
        await body(ctx, p, counter)
        await scrape_numbering_counters(ctx)
        result = await audit(ctx, p.timeouts)
    except HarnessError as failure:
        error = str(failure).splitlines()[0]
        log(f"HARNESS ERROR in {name}: {failure}")
        # The failing processes, then every other one (a server that died after it was ready
        # shows up only in its own log, which teardown removes without --keep).
        named = {proc.name for proc in failure.procs}
        others = [proc for name, proc in env.procs.items() if name not in named]
        for proc in [*failure.procs, *others]:
            state = "running" if proc.running() else "not running"
            print(f"--- last lines of {proc.name}, {state} ({proc.log_path}) ---\n"
                  f"{proc.tail(lines=10 if proc.name not in named else 30)}",
                  file=sys.stderr)
    except Exception as failure:  # noqa: BLE001 - any other failure is the harness's own
        error = f"{type(failure).__name__}: {failure}".splitlines()[0]
        log(f"HARNESS ERROR in {name}:\n{traceback.format_exc()}")
    finally:
        await env.teardown()

    fields = summary_fields(ctx, counter, result, error, started)
    bound = P99_BOUND_MS.get(name)
    if bound is not None and fields["ok"] and float(fields["p99_ms"]) > bound:
        log(f"{name}: p99 {fields['p99_ms']} ms is over {bound} ms: requests hung on the fault")
        fields["ok"] = False
    if result is not None:
        report_details(name, ctx, result, counter)
    write_report(root, name, fields, result, ledger)
    print(summary_line(name, fields), flush=True)
    return bool(fields["ok"])
