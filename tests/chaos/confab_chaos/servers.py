"""The private backing servers of one scenario: MariaDB, Redis and NATS with JetStream (one node,
or a three-node cluster), each on free loopback ports with its own data directory, and what the
suite asks JetStream about its stream and consumers."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Awaitable, Callable, List, Optional, Tuple

from .clients import MySQL, NatsError, jetstream_ready, nats_request, redis_ping
from .harness import (HOST, Deadline, HarnessError, free_port, nats_server_binary,
                      nats_server_problem, which)
from .processes import Proc, ProcessTable, wait_ready


class Servers:
    """Private MariaDB, Redis and NATS (one node or a three-node JetStream cluster), on free
    loopback ports, each with its own data directory under `root`. Their processes go into
    `procs`, the table they share with the Confab services."""

    def __init__(self, root: Path, procs: ProcessTable, nats_nodes: int):
        self.root = root
        self.procs = procs
        self.mysql_port = free_port()
        self.redis_port = free_port()
        self.nats_ports = [free_port() for _ in range(nats_nodes)]
        self.nats_cluster_ports = [free_port() for _ in range(nats_nodes)] if nats_nodes > 1 else []

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
        data = self.root / "redis"
        data.mkdir(parents=True)
        # No persistence: a restarted Redis is empty, which is the Redis-loss fault.
        argv = [which("redis-server", "/usr/bin/redis-server") or "redis-server",
                "--port", str(self.redis_port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", str(data), "--daemonize", "no"]
        await self._launch("redis", argv, lambda: redis_ping(self.redis_port), 30)

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
