"""The faults: SIGKILL and restart of one process or of the JetStream stream's leader, and the
schedule that injects them in turn while the writers run."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, List, Optional, Tuple

from .environment import Environment
from .harness import HarnessError, log
from .processes import Proc, wait_ready


async def kill_and_restart(proc: Proc, down_for: float, ready_timeout: float) -> None:
    """The basic fault: SIGKILL, stay down for a moment, start again on the same port and data,
    and wait until it is ready (so faults do not pile up on one another)."""
    async with proc.lock:
        proc.kill_now()
        await asyncio.sleep(down_for)
        proc.start()
        await wait_ready(proc, ready_timeout)


async def kill_stream_leader(env: Environment, down_for: float) -> None:
    leader = await env.stream_leader()
    proc = env.procs.get(f"nats-{leader}")
    if proc is None:
        raise HarnessError(f"unknown stream leader {leader!r}")
    async with proc.lock:
        log(f"killing the stream leader {leader}")
        proc.kill_now()
        await asyncio.sleep(down_for)
        proc.start()
        await wait_ready(proc, 60)
    new_leader = await env.stream_leader()
    log(f"stream leader is now {new_leader}")


@dataclass
class FaultCounter:
    injected: int = 0
    labels: List[str] = field(default_factory=list)


Fault = Tuple[str, Callable[[], Awaitable[None]]]


async def fault_schedule(faults: List[Fault], first_after: float, interval: float, end: float,
                         counter: FaultCounter, max_faults: Optional[int] = None) -> None:
    """Injects the faults in turn, one every `interval` seconds (or as soon as the previous one
    has recovered), until the load's end. A fault that has begun always completes its restart."""
    next_at = time.monotonic() + first_after
    index = 0
    while max_faults is None or counter.injected < max_faults:
        now = time.monotonic()
        if next_at >= end:
            return
        if next_at > now:
            await asyncio.sleep(next_at - now)
        label, action = faults[index % len(faults)]
        log(f"fault {counter.injected + 1}: {label}")
        await action()
        counter.injected += 1
        counter.labels.append(label)
        index += 1
        next_at = max(next_at + interval, time.monotonic())
