"""The faults: SIGKILL and restart of one process or of the JetStream stream's leader, a Redis
Cluster master's failover (with its replica stopped first, so increments are lost) and a
resharding of the cluster's slots, and the schedule that injects them in turn while the writers
run."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Dict, List, Optional, Set, Tuple

from .clients import RedisError, redis_cli, redis_command
from .environment import Environment
from .harness import HOST, Deadline, HarnessError, log
from .ledger import Chat, Ledger
from .processes import Proc, wait_ready
from .servers import RedisNode, Servers


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


# -- Redis Cluster -----------------------------------------------------------------------------

@dataclass
class RedisFailover:
    """What a master's failover recorded, for the checks after the load."""
    master: str = ""                        # the killed master's process name
    replica: str = ""                       # the replica that took over
    killed_at: Optional[float] = None       # time.monotonic() of the SIGKILL
    chats: Set[Chat] = field(default_factory=set)   # chats whose message sequence it held
    promoted_after: Optional[float] = None  # seconds from the kill until its replica took over
    unreplicated_bytes: Optional[int] = None   # replication stream the replica never got

    def describe_chats(self) -> str:
        """`8 chats of applications 1, 2, 5, 6` (counted from 1, as their names are)."""
        apps = sorted({chat.app + 1 for chat in self.chats})
        return f"{len(self.chats)} chats of applications {', '.join(map(str, apps))}"

    def writes_resumed_after(self, ledger: Ledger) -> Optional[float]:
        """Seconds from the kill until the first message creation in one of `chats` was
        acknowledged, counting only attempts sent after the kill (one sent before may have
        taken its number from the master before it died); None when there was none."""
        if self.killed_at is None:
            return None
        acks = [req.acked_at for req in ledger.requests
                if req.kind == "message" and req.acked_at is not None and req.chat in self.chats
                and req.sent_at >= self.killed_at]
        return min(acks) - self.killed_at if acks else None


# A filler value on the master to fail over (see fill_replication_link), in chunks of 1 MiB.
FILLER_CHUNK = 1 << 20
FILLER_MAX_CHUNKS = 64


async def key_on(servers: Servers, node: RedisNode, stem: str) -> str:
    """A key name `<stem>{<n>}` whose slot `node` serves."""
    for n in range(10_000):
        name = f"{stem}{{{n}}}"
        if node.owns(int(await servers.redis_any("CLUSTER", "KEYSLOT", name))):
            return name
    raise HarnessError(f"no key found for the node on port {node.port}")


async def fill_replication_link(servers: Servers, master: RedisNode) -> List[str]:
    """Fills the link from `master` to its (stopped) replica. On loopback the kernel's socket
    buffers hold megabytes, so a stopped replica would still receive everything its master
    wrote before dying, and no increment would be lost. Writing filler values (1 MiB each, under
    a key of the suite's own on one of the master's slots) until the master keeps at least 1 MiB
    more of output for the replica in its own memory means that what the master writes next,
    Confab's increments among it, dies with it. Returns the filler keys."""
    async def output_buffered() -> int:
        clients = await redis_command(master.port, "CLIENT", "LIST", "TYPE", "replica")
        return sum(int(item.split("=", 1)[1]) for item in clients.split()
                   if item.startswith("omem="))

    stem = await key_on(servers, master, "chaos-filler:")
    baseline = await output_buffered()
    keys: List[str] = []
    while len(keys) < FILLER_MAX_CHUNKS:
        key = f"{stem}:{len(keys)}"
        await redis_command(master.port, "SET", key, b"x" * FILLER_CHUNK, timeout=10)
        keys.append(key)
        if await output_buffered() >= baseline + FILLER_CHUNK:
            return keys
    log(f"redis: {len(keys)} MiB of filler did not fill the link to the replica; it may "
        f"receive every increment")
    return keys


SEQUENCE_KEY = r"seq:messages:\{(\d+)\}:(\d+)$"


async def fail_over_redis_master(env: Environment, apps: Dict[int, int], prefix: str,
                                 record: RedisFailover, stop_replica_for: float = 1.5,
                                 timeout: float = 30) -> None:
    """The failover of a Redis Cluster master that holds message sequences of the writers'
    applications (`apps` maps their ids to their indexes), with unreplicated increments:

    1. SIGSTOP of the master's replica, for `stop_replica_for` seconds while the writers go on
       (with the link between them filled first, fill_replication_link), so the master
       acknowledges increments its replica does not get;
    2. SIGKILL of the master and SIGCONT of the replica at the same moment: the replica takes
       over after the cluster's node timeout, without those increments, and may hand out
       numbers the dead master handed out already;
    3. once it has, the killed node restarts on its directory (its nodes.conf) and rejoins as
       the new master's replica.

    The chats whose sequences the master held, the time of the kill, how long the takeover
    took and how much of the replication stream the replica never got go into `record`."""
    servers = env.servers
    sequence = re.compile(re.escape(prefix) + SEQUENCE_KEY)
    masters = [n for n in await servers.redis_nodes() if n.master and n.slots]
    held: Dict[str, Set[Chat]] = {}
    for node in masters:
        held[node.id] = set()
        for key in await servers.redis_keys(node.port, f"{prefix}seq:messages:*"):
            match = sequence.match(key)
            if match and int(match.group(1)) in apps:
                held[node.id].add(Chat(apps[int(match.group(1))], int(match.group(2))))
    master = max(masters, key=lambda n: (len(held[n.id]), -n.port))
    if not held[master.id]:
        raise HarnessError(f"no Redis master holds a message sequence ({prefix}seq:messages:"
                           f"{{<application id>}}:<chat>) of the writers' applications",
                           tuple(servers.redis_procs()))
    replicas = [n for n in await servers.redis_nodes() if n.master_id == master.id]
    if len(replicas) != 1:
        raise HarnessError(f"the master on port {master.port} has {len(replicas)} replicas",
                           tuple(servers.redis_procs()))
    replica = replicas[0]
    master_proc, replica_proc = servers.redis_proc(master.port), servers.redis_proc(replica.port)
    record.master, record.replica = master_proc.name, replica_proc.name
    record.chats = held[master.id]
    log(f"redis: {master_proc.name} masters the sequences of the {record.describe_chats()}; "
        f"stopping its replica {replica_proc.name} for {stop_replica_for:.1f}s")

    async with master_proc.lock:
        async with replica_proc.lock:
            replica_proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                fillers = await fill_replication_link(servers, master)
                await asyncio.sleep(max(0.0, stop_replica_for - (time.monotonic() - stopped)))
                master_offset = int((await servers.redis_info(master.port, "replication"))
                                    ["master_repl_offset"])
            except BaseException:
                replica_proc.send_signal(signal.SIGCONT)
                raise
            record.killed_at = time.monotonic()
            master_proc.kill_now()
            replica_proc.send_signal(signal.SIGCONT)
        log(f"redis: killed {master_proc.name}, continued {replica_proc.name}")

        deadline = Deadline(timeout)
        while True:
            try:
                if any(n.id == replica.id and n.master and n.slots and not n.failing
                       for n in await servers.redis_nodes()):
                    break
            except (OSError, asyncio.TimeoutError, RedisError):
                pass
            if deadline.expired():
                raise HarnessError(f"{replica_proc.name} did not take over from "
                                   f"{master_proc.name} within {timeout:.0f}s",
                                   tuple(servers.redis_procs()))
            await asyncio.sleep(0.1)
        record.promoted_after = time.monotonic() - record.killed_at
        # A promoted replica's second_repl_offset is one past the last byte it had replicated.
        info = await servers.redis_info(replica.port, "replication")
        record.unreplicated_bytes = max(0, master_offset - (int(info["second_repl_offset"]) - 1))
        log(f"redis: {replica_proc.name} took over {record.promoted_after:.1f}s after the kill, "
            f"without the last {record.unreplicated_bytes} bytes of its master's replication "
            f"stream (which had {len(fillers)} MiB of filler)")
        for key in fillers:
            try:
                await redis_command(replica.port, "DEL", key)
            except (OSError, asyncio.TimeoutError, RedisError):
                pass

        restarted = time.monotonic()
        master_proc.start()
        await wait_ready(master_proc, 30)
    await servers.wait_redis_settled(60)
    log(f"redis: {master_proc.name} rejoined as a replica "
        f"{time.monotonic() - restarted:.1f}s after its restart")


async def reshard_redis(servers: Servers, apps: Dict[int, int], slots: int = 2000) -> None:
    """Moves at least `slots` slots from one master to another with `redis-cli --cluster
    reshard` while the writers go on, then `redis-cli --cluster check`. reshard takes a source's
    slots from its first on, so the source is the master where the slot of one of the writers'
    applications (the slot of its hash tag `{<id>}`) comes first, and enough slots move to take
    that one along."""
    await servers.wait_redis_settled(60)
    await servers.check_redis_cluster()
    masters = [n for n in await servers.redis_nodes() if n.master and n.slots]
    slot_of = {app_id: int(await servers.redis_any("CLUSTER", "KEYSLOT", f"{{{app_id}}}"))
               for app_id in apps}
    best: Optional[Tuple[int, RedisNode]] = None
    for node in masters:
        position = {slot: i for i, slot in enumerate(node.slot_list())}
        for slot in slot_of.values():
            if slot in position and (best is None or position[slot] < best[0]):
                best = (position[slot], node)
    if best is None:
        raise HarnessError("no master serves a slot of the writers' applications")
    source = best[1]
    owned = source.slot_list()
    count = min(max(slots, best[0] + 1), len(owned) - 1)
    target = min((n for n in masters if n.id != source.id), key=lambda n: len(n.slot_list()))
    moving = set(owned[:count])
    moved = sorted(apps[app_id] + 1 for app_id, slot in slot_of.items() if slot in moving)
    source_name = servers.redis_proc(source.port).name
    target_name = servers.redis_proc(target.port).name
    log(f"redis: resharding {count} slots from {source_name} to {target_name}, "
        f"with the keys of applications {', '.join(map(str, moved)) or 'none'}")
    started = time.monotonic()
    code, out = await redis_cli("--cluster", "reshard", f"{HOST}:{source.port}",
                                "--cluster-from", source.id, "--cluster-to", target.id,
                                "--cluster-slots", str(count), "--cluster-yes", timeout=300)
    if code != 0 or "[ERR]" in out:
        raise HarnessError(f"redis-cli --cluster reshard failed (exit {code}):\n{out[-3000:]}",
                           tuple(servers.redis_procs()))
    await servers.check_redis_cluster()
    log(f"redis: resharded in {time.monotonic() - started:.1f}s; redis-cli --cluster check "
        f"finds nothing wrong")


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
