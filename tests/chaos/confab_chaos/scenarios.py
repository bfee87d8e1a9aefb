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
from .faults import (Fault, FaultCounter, RedisFailover, fail_over_redis_master, fault_schedule,
                     kill_and_restart, kill_stream_leader, reshard_redis)
from .harness import HarnessError, Options, log
from .ledger import Ledger
from .load import (Context, probe_idempotency, run_load, setup_application,
                   wait_chats_persisted, warm_up)
from .report import report_details, summary_fields, summary_line, write_report

SCENARIOS = ("faults", "redis-loss-lagging", "cluster", "redis-cluster")


@dataclass
class Plan:
    duration: float
    timeouts: Dict[str, float]


def plan(opts: Options, name: str) -> Plan:
    """Durations per scenario; --short fits all four in about five minutes of wall time on two
    cores with debug binaries."""
    full = {"faults": 45, "redis-loss-lagging": 30, "cluster": 45, "redis-cluster": 45}
    short = {"faults": 30, "redis-loss-lagging": 15, "cluster": 24, "redis-cluster": 30}
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


# redis-cluster: the longest the writers of an application whose keys were on a killed Redis
# master may go without an acknowledged message (its replica takes over after about twice the
# cluster's node timeout, 2 s, and the services must then find it).
WRITES_RESUME_BOUND_S = 10.0


async def scenario_redis_cluster(ctx: Context, p: Plan, counter: FaultCounter) -> None:
    """A Redis Cluster of three masters with a replica each, six applications whose keys spread
    over the masters, and two faults while writing: a master's failover that loses increments
    (its replica is stopped first, then the master is killed as the replica continues; the
    master restarts and rejoins as a replica), then 2000 or more slots resharded from one master
    to another. Checks, besides the audit: writes in the killed master's applications resume
    within WRITES_RESUME_BOUND_S, and the keys are spread over at least two masters."""
    env = ctx.env
    await env.start_services(list(SERVICES))
    env.start_watchdog()
    await setup_application(ctx, chats=2, scenario="redis-cluster", apps=6)
    await wait_chats_persisted(ctx)
    ctx.idempotency = await probe_idempotency(ctx)
    await warm_up(ctx)
    apps = {app.id: i for i, app in enumerate(ctx.apps) if app.id is not None}
    prefix = env.setting("CONFAB_REDIS_PREFIX", "confab:")
    failover = RedisFailover()
    faults: List[Fault] = [
        ("redis master failover (replica stopped 1.5 s first)",
         lambda: fail_over_redis_master(env, apps, prefix, failover, 1.5)),
        ("redis reshard", lambda: reshard_redis(env.servers, apps)),
    ]
    # The failover and the replica's rejoining take about 10 s; the reshard starts half-way
    # through what is left, or as soon as the failover is over.
    interval = max(2.0, (p.duration - 3.0) / 2)
    await run_load(ctx, p.duration,
                   lambda end: fault_schedule(faults, 3.0, interval, end, counter, len(faults)))
    if counter.injected < len(faults):
        log(f"redis-cluster: the load ended after {counter.injected} of {len(faults)} faults; "
            f"give it a longer --duration")

    if failover.killed_at is not None:
        resumed = failover.writes_resumed_after(ctx.ledger)
        ctx.extra_fields["failover_s"] = round(failover.promoted_after or 0.0, 1)
        ctx.extra_fields["writes_resume_s"] = "none" if resumed is None else round(resumed, 1)
        ctx.extra_fields["unreplicated_bytes"] = failover.unreplicated_bytes
        names = failover.describe_chats()
        if resumed is None:
            ctx.failures.append(f"no message to the {names}, whose sequences were on the "
                                f"killed {failover.master}, was acknowledged after the kill")
        elif resumed > WRITES_RESUME_BOUND_S:
            ctx.failures.append(f"writes to the {names} resumed {resumed:.1f}s after "
                                f"{failover.master} was killed (bound "
                                f"{WRITES_RESUME_BOUND_S:.0f}s)")
        else:
            log(f"redis-cluster: writes to the {names} resumed {resumed:.1f}s after "
                f"{failover.master} was killed")
    counts = await env.servers.redis_key_counts(f"{prefix}*")
    log(f"redis-cluster: keys per master: "
        f"{', '.join(f'{name}={n}' for name, n in sorted(counts.items()))}")
    spread = sum(1 for n in counts.values() if n)
    ctx.extra_fields["masters_with_keys"] = spread
    if spread < 2:
        ctx.failures.append(f"the keys are on {spread} master(s), not spread over two or more")


# Latency every scenario must keep at the 99th percentile, where its fault should cost a quick
# answer rather than a wait: Redis gone costs fast 503s (a reconnect that paused up to 60 s made
# requests hang until their timeout before the api's Redis client was configured not to).
P99_BOUND_MS = {"redis-loss-lagging": 2500.0}


# Per scenario: its service settings, its NATS nodes, its Redis nodes and its body.
SCENARIO_SETUP = {
    "faults": ({}, 1, 1, scenario_faults),
    # A 1 s publish deadline makes numbering's wait after each Redis loss 1.2 s, so writes
    # resume between losses (Redis is down 1.5 s of every 4 s).
    "redis-loss-lagging": ({"CONFAB_DUPLICATE_WINDOW_SECS": "1",
                            "CONFAB_PUBLISH_DEADLINE_MS": "1000"}, 1, 1,
                           scenario_redis_loss_lagging),
    "cluster": ({"CONFAB_STREAM_REPLICAS": "3"}, 3, 1, scenario_cluster),
    # Six Redis nodes, three masters with a replica each. The persister waits for one replica
    # to acknowledge its sequence raises before it acks the events behind them.
    "redis-cluster": ({"CONFAB_REDIS_WAIT_REPLICAS": "1"}, 1, 6, scenario_redis_cluster),
}


async def run_scenario(name: str, opts: Options, tmp_root: Path) -> bool:
    """Runs one scenario end to end and prints its summary line; True when it passed."""
    started = time.monotonic()
    scenario_env, nats_nodes, redis_nodes, body = SCENARIO_SETUP[name]
    root = tmp_root / name
    root.mkdir(parents=True)
    log(f"=== scenario {name} (logs in {root}) ===")
    env = Environment(opts, root, scenario_env, nats_nodes, redis_nodes)
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
    write_report(root, name, fields, result, ctx)
    print(summary_line(name, fields), flush=True)
    return bool(fields["ok"])
