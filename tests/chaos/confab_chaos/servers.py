"""The private backing servers of one scenario: MariaDB, Redis (one node, or a Redis Cluster of
three masters with a replica each) and NATS with JetStream (one node, or a three-node cluster),
each on free loopback ports with its own data directory, and what the suite asks JetStream about
its stream and consumers and Redis Cluster about its nodes, slots and keys."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Optional, Tuple

from .clients import (MySQL, NatsError, RedisError, jetstream_ready, nats_request, redis_cli,
                      redis_command, redis_ping)
from .harness import (HOST, Deadline, HarnessError, free_port, nats_server_binary,
                      nats_server_problem, which)
from .processes import Proc, ProcessTable, wait_ready

# How long a Redis Cluster node may be unreachable before the others fail it over: its replica
# takes over a killed master about one and a half to two times this later.
REDIS_NODE_TIMEOUT_MS = 2000


@dataclass
class RedisNode:
    """One node as a line of `CLUSTER NODES` describes it."""
    id: str
    port: int
    master: bool
    master_id: str                 # the master it replicates ("" for a master)
    failing: bool                  # flagged `fail` or `fail?` (or without an address yet)
    slots: Tuple[Tuple[int, int], ...]   # the slot ranges it serves, first to last

    def slot_list(self) -> List[int]:
        """Its slots in ascending order: the order in which `redis-cli --cluster reshard` takes
        them from a source node."""
        return [slot for first, last in self.slots for slot in range(first, last + 1)]

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def parse_cluster_nodes(text: str) -> List[RedisNode]:
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        address = fields[1].split("@")[0].split(",")[0]
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue        # a slot being imported or migrated: still its owner's
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(RedisNode(
            id=fields[0], port=int(address.rsplit(":", 1)[1] or 0), master="master" in flags,
            master_id="" if fields[3] == "-" else fields[3],
            failing=bool({"fail", "fail?", "noaddr", "handshake"} & set(flags)),
            slots=tuple(sorted(slots))))
    return sorted(nodes, key=lambda node: node.port)


class Servers:
    """Private MariaDB, Redis (one node, or a Redis Cluster of `redis_nodes` nodes, half of
    them masters) and NATS (one node or a three-node JetStream cluster), on free loopback ports,
    each with its own data directory under `root`. Their processes go into `procs`, the table
    they share with the Confab services."""

    def __init__(self, root: Path, procs: ProcessTable, nats_nodes: int, redis_nodes: int = 1):
        self.root = root
        self.procs = procs
        self.mysql_port = free_port()
        self.redis_ports = [free_port() for _ in range(redis_nodes)]
        # A cluster node's bus port is set explicitly (Redis 7's cluster-port); its default, the
        # port plus 10000, may not be free or may not even exist.
        self.redis_bus_ports = [free_port() for _ in range(redis_nodes)] if redis_nodes > 1 else []
        self.nats_ports = [free_port() for _ in range(nats_nodes)]
        self.nats_cluster_ports = [free_port() for _ in range(nats_nodes)] if nats_nodes > 1 else []

    @property
    def redis_cluster(self) -> bool:
        return len(self.redis_ports) > 1

    @property
    def redis_url(self) -> str:
        """REDIS_URL: the node, or every node of the cluster, comma-separated."""
        return ",".join(f"redis://{HOST}:{port}" for port in self.redis_ports)

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(self._start_mariadb(), self._start_redis(), self._start_nats())
        await self.db_root().query("CREATE DATABASE IF NOT EXISTS confab")

    def db_root(self) -> MySQL:
        return MySQL(self.mysql_port)

    async def _start_mariadb(self) -> None:
        data = self.root / "mariadb"
        data.mkdir(parents=True)
        install = which("mariadb-install-db", "/usr/bin/mariadb-install-db") or "mysql_install_db"
        # --no-defaults first: the machine's /etc/mysql configuration (port, socket, datadir)
        # belongs to the system MariaDB, not to ours.
        result = await asyncio.create_subprocess_exec(
            install, "--no-defaults", f"--datadir={data}", "--user=root",
            "--auth-root-authentication-method=normal", "--skip-test-db",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(result.communicate(), 120)
        except asyncio.TimeoutError:
            result.kill()
            await result.wait()
            raise HarnessError("mariadb-install-db did not finish within 120s")
        if result.returncode != 0:
            raise HarnessError(f"mariadb-install-db failed:\n{out.decode(errors='replace')[-3000:]}")
        argv = [
            which("mariadbd", "/usr/sbin/mariadbd") or "/usr/sbin/mariadbd", "--no-defaults",
            f"--datadir={data}", f"--port={self.mysql_port}", f"--bind-address={HOST}",
            f"--socket={data}/mariadb.sock", f"--pid-file={data}/mariadb.pid", "--user=root",
            "--skip-log-bin", "--skip-name-resolve", "--innodb-buffer-pool-size=128M",
            # Commits reach the OS at once but are fsynced once a second: the faults here are
            # process kills, which lose nothing that reached the OS, and the two cores are
            # better spent on the services.
            "--innodb-flush-log-at-trx-commit=2", "--max-connections=500",
        ]
        await self._launch("mariadb", argv, self._mariadb_ready, 60)

    async def _mariadb_ready(self) -> bool:
        await self.db_root().query("SELECT 1", timeout=5)
        return True

    async def _start_redis(self) -> None:
        if self.redis_cluster:
            await self._start_redis_cluster()
            return
        data = self.root / "redis"
        data.mkdir(parents=True)
        port = self.redis_ports[0]
        # No persistence: a restarted Redis is empty, which is the Redis-loss fault.
        argv = [which("redis-server", "/usr/bin/redis-server") or "redis-server",
                "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", str(data), "--daemonize", "no"]
        await self._launch("redis", argv, lambda: redis_ping(port), 30)

    async def _start_redis_cluster(self) -> None:
        binary = which("redis-server", "/usr/bin/redis-server") or "redis-server"
        for i, (port, bus_port) in enumerate(zip(self.redis_ports, self.redis_bus_ports)):
            data = self.root / f"redis-n{i + 1}"
            data.mkdir(parents=True)
            # No persistence: a restarted node comes back empty and copies the data of the
            # master it then replicates. Its nodes.conf, in its own directory, keeps its
            # identity and its view of the cluster across restarts.
            argv = [binary, "--port", str(port), "--bind", HOST, "--save", "",
                    "--appendonly", "no", "--dir", str(data), "--daemonize", "no",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(REDIS_NODE_TIMEOUT_MS),
                    "--cluster-port", str(bus_port)]
            self.procs.add(self.redis_name(i), argv, dict(os.environ),
                           lambda port=port: redis_ping(port))
        for proc in self.redis_procs():
            proc.start()
            proc.wanted = True
        for proc in self.redis_procs():
            await wait_ready(proc, 30, max_restarts=0)
        code, out = await redis_cli("--cluster", "create",
                                    *(f"{HOST}:{port}" for port in self.redis_ports),
                                    "--cluster-replicas", "1", "--cluster-yes", timeout=60)
        if code != 0 or "[ERR]" in out:
            raise HarnessError(f"redis-cli --cluster create failed (exit {code}):\n{out[-3000:]}",
                               tuple(self.redis_procs()))
        await self.wait_redis_settled(60)

    async def _start_nats(self) -> None:
        # CONFAB_NATS_SERVER (the pinned 2.10+ server scripts/dev installs) when set; one older
        # than 2.10 is refused here too, not only by chaos.py's prerequisites.
        problem = nats_server_problem()
        if problem is not None:
            raise HarnessError(problem)
        binary = nats_server_binary()
        assert binary is not None
        nodes = len(self.nats_ports)
        for i, port in enumerate(self.nats_ports):
            data = self.root / f"nats-n{i + 1}"
            data.mkdir(parents=True)
            argv = [binary, "-a", HOST, "-p", str(port), "-js", "-sd", str(data),
                    "--server_name", f"n{i + 1}"]
            if nodes > 1:
                routes = ",".join(f"nats://{HOST}:{p}" for j, p in enumerate(self.nats_cluster_ports)
                                  if j != i)
                argv += ["--cluster", f"nats://{HOST}:{self.nats_cluster_ports[i]}",
                         "--routes", routes, "--cluster_name", "c"]
            self.procs.add(self.nats_name(i), argv, dict(os.environ),
                           lambda port=port: jetstream_ready(port))
        # Cluster nodes only become ready together (JetStream needs a meta leader).
        for proc in self.nats_procs():
            proc.start()
            proc.wanted = True
        for proc in self.nats_procs():
            await wait_ready(proc, 60, max_restarts=0)

    def nats_name(self, index: int) -> str:
        return "nats" if len(self.nats_ports) == 1 else f"nats-n{index + 1}"

    def nats_procs(self) -> List[Proc]:
        return [self.procs[self.nats_name(i)] for i in range(len(self.nats_ports))]

    async def _launch(self, name: str, argv: List[str], ready: Callable[[], Awaitable[bool]],
                      timeout: float) -> None:
        proc = self.procs.add(name, argv, dict(os.environ), ready)
        proc.start()
        proc.wanted = True
        await wait_ready(proc, timeout, max_restarts=0)

    # -- Redis Cluster ----------------------------------------------------------------------

    def redis_name(self, index: int) -> str:
        return "redis" if len(self.redis_ports) == 1 else f"redis-n{index + 1}"

    def redis_procs(self) -> List[Proc]:
        return [self.procs[self.redis_name(i)] for i in range(len(self.redis_ports))]

    def redis_proc(self, port: int) -> Proc:
        return self.procs[self.redis_name(self.redis_ports.index(port))]

    async def redis_any(self, *args, timeout: float = 3.0):
        """A command that any cluster node answers alike (CLUSTER NODES, CLUSTER KEYSLOT),
        through the first running node that answers."""
        last: Exception = RedisError("no Redis node is running")
        for port, proc in zip(self.redis_ports, self.redis_procs()):
            if not proc.running():
                continue
            try:
                return await redis_command(port, *args, timeout=timeout)
            except (OSError, asyncio.TimeoutError, RedisError) as error:
                last = error
        raise RedisError(f"{' '.join(map(str, args))}: {last}")

    async def redis_nodes(self, port: Optional[int] = None) -> List[RedisNode]:
        """The cluster's nodes as `port`'s node, or else any running node, sees them."""
        if port is not None:
            return parse_cluster_nodes(await redis_command(port, "CLUSTER", "NODES"))
        return parse_cluster_nodes(await self.redis_any("CLUSTER", "NODES"))

    async def redis_info(self, port: int, section: str) -> Dict[str, str]:
        text = await redis_command(port, "INFO", section)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    async def redis_keys(self, port: int, pattern: str) -> List[str]:
        """The keys one node holds that match `pattern` (SCAN; a replica holds its master's)."""
        keys: List[str] = []
        cursor = "0"
        while True:
            cursor, batch = await redis_command(port, "SCAN", cursor, "MATCH", pattern,
                                                "COUNT", 1000)
            keys.extend(batch)
            if cursor == "0":
                return keys

    async def redis_cluster_problem(self) -> Optional[str]:
        """Why the cluster is not settled, or None when it is: every node running, its
        cluster_state ok, all of them agreeing on which node masters which slots, half of
        them masters, none failing, and every master with a replica whose link to it is up."""
        views: Dict[int, list] = {}
        nodes: List[RedisNode] = []
        for port, proc in zip(self.redis_ports, self.redis_procs()):
            if not proc.running():
                return f"{proc.name} is not running"
            try:
                info = await redis_command(port, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return f"{proc.name}: cluster_state is not ok"
                nodes = await self.redis_nodes(port)
            except (OSError, asyncio.TimeoutError, RedisError) as error:
                return f"{proc.name}: {error}"
            views[port] = sorted((n.id, n.port, n.master, n.master_id, n.failing, n.slots)
                                 for n in nodes)
        if any(view != views[self.redis_ports[0]] for view in views.values()):
            return "the nodes do not agree on the cluster's layout yet"
        if any(n.failing for n in nodes):
            return "a node is flagged as failing"
        masters = {n.id: n for n in nodes if n.master and n.slots}
        if len(masters) != len(self.redis_ports) // 2:
            return f"{len(masters)} masters serve slots"
        replicas = [n for n in nodes if not n.master]
        if {n.master_id for n in replicas} != set(masters):
            return "not every master has a replica yet"
        for replica in replicas:
            try:
                link = (await self.redis_info(replica.port, "replication")).get(
                    "master_link_status")
            except (OSError, asyncio.TimeoutError, RedisError) as error:
                return f"replica on port {replica.port}: {error}"
            if link != "up":
                return f"the replica on port {replica.port} has its link to its master {link}"
        return None

    async def wait_redis_settled(self, timeout: float) -> None:
        deadline = Deadline(timeout)
        problem = await self.redis_cluster_problem()
        while problem is not None:
            if deadline.expired():
                raise HarnessError(f"the Redis Cluster did not settle within {timeout:.0f}s: "
                                   f"{problem}", tuple(self.redis_procs()))
            await asyncio.sleep(0.3)
            problem = await self.redis_cluster_problem()

    async def check_redis_cluster(self, timeout: float = 30) -> None:
        """`redis-cli --cluster check` until it finds nothing wrong (no error, no warning such
        as a slot left open by a migration)."""
        deadline = Deadline(timeout)
        while True:
            port = next(p for p, proc in zip(self.redis_ports, self.redis_procs())
                        if proc.running())
            code, out = await redis_cli("--cluster", "check", f"{HOST}:{port}", timeout=60)
            if code == 0 and "[ERR]" not in out and "[WARNING]" not in out:
                return
            if deadline.expired():
                raise HarnessError(f"redis-cli --cluster check still fails after {timeout:.0f}s "
                                   f"(exit {code}):\n{out[-3000:]}", tuple(self.redis_procs()))
            await asyncio.sleep(1.0)

    async def redis_key_counts(self, pattern: str) -> Dict[str, int]:
        """How many keys matching `pattern` each master holds, by its process's name."""
        counts = {}
        for node in await self.redis_nodes():
            if node.master and not node.failing:
                counts[self.redis_proc(node.port).name] = len(
                    await self.redis_keys(node.port, pattern))
        return counts

    # -- JetStream introspection ------------------------------------------------------------

    async def js_api(self, subject: str, timeout: float = 3.0) -> dict:
        """A JetStream API request through whichever NATS node answers first in turn."""
        last: Exception = NatsError("no NATS node")
        for port, proc in zip(self.nats_ports, self.nats_procs()):
            if not proc.running():
                continue
            try:
                return await nats_request(port, subject, timeout=timeout)
            except (OSError, asyncio.TimeoutError, NatsError, ValueError) as error:
                last = error
        raise NatsError(f"{subject}: {last}")

    async def consumer_pending(self, stream: str, consumer: str) -> Optional[Tuple[int, int]]:
        """(num_pending, num_ack_pending) of a durable consumer, or None when unknown."""
        try:
            info = await self.js_api(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}")
        except NatsError:
            return None
        if "error" in info:
            return None
        return int(info.get("num_pending", 0)), int(info.get("num_ack_pending", 0))

    async def stream_leader(self, stream: str, timeout: float = 20) -> str:
        """The server name of the stream's current leader."""
        deadline = Deadline(timeout)
        while not deadline.expired():
            try:
                info = await self.js_api(f"$JS.API.STREAM.INFO.{stream}")
                leader = (info.get("cluster") or {}).get("leader")
                if leader:
                    return leader
            except NatsError:
                pass
            await asyncio.sleep(0.3)
        raise HarnessError(f"stream {stream} has no leader after {timeout:.0f}s",
                           tuple(self.nats_procs()))
