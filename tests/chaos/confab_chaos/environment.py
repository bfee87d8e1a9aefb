"""One scenario's environment: its private servers (servers.py) and the Confab services, each
binary a separate OS process with its own ports, configured through the environment; the
migration, start-up, the watchdog and the teardown."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .clients import MySQL, http_get_status
from .harness import HOST, HarnessError, Options, free_port, log
from .processes import ProcessTable, wait_ready, watchdog
from .servers import Servers

SERVICES = ("api-a", "api-b", "persister", "indexer", "counter-reconciler")
BINARY_OF = {
    "api-a": "confab-api",
    "api-b": "confab-api",
    "persister": "confab-persister",
    "indexer": "confab-indexer",
    "counter-reconciler": "confab-counter-reconciler",
}
STARTUP_RESTARTS = 3


class Environment:
    """Private MariaDB, Redis (one node or a six-node Redis Cluster) and NATS (one node or a
    three-node JetStream cluster), on free loopback ports, each with its own data directory under
    `root`, plus the Confab services."""

    def __init__(self, opts: Options, root: Path, scenario_env: Dict[str, str], nats_nodes: int,
                 redis_nodes: int = 1):
        self.opts = opts
        self.root = root
        self.scenario_env = scenario_env
        self.procs = ProcessTable(root)
        self.servers = Servers(root, self.procs, nats_nodes, redis_nodes)
        self.http_ports = {"api-a": free_port(), "api-b": free_port()}
        self.admin_ports = {name: free_port() for name in SERVICES}
        self.search_port = free_port()
        self.db = MySQL(self.servers.mysql_port, "confab")
        self.watchdog_task: Optional[asyncio.Task] = None
        self.common_env = self._common_env()

    # -- configuration --------------------------------------------------------------------

    def _common_env(self) -> Dict[str, str]:
        """The services' environment. Precedence, lowest first: this process's environment,
        the harness's tunables (unless set in that environment), --env, the scenario's settings,
        and finally the addresses of this run's private servers, which nothing may override."""
        env = dict(os.environ)
        # Never let a developer's connection settings point a chaos run at shared servers or
        # export telemetry anywhere.
        for name in ("DATABASE_URL", "REDIS_URL", "CONFAB_REDIS_CLUSTER", "NATS_URL",
                     "ELASTICSEARCH_URL", "OTEL_EXPORTER_OTLP_ENDPOINT",
                     "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            env.pop(name, None)
        tunables = {
            "RUST_LOG": "info",
            # The rate limiter still runs on every message, but never refuses one.
            "CONFAB_DEFAULT_MESSAGES_PER_SECOND": "10000000",
            "CONFAB_DEFAULT_MESSAGE_BURST": "10000000",
            # Counts converge quickly, so the audit's wait for them is short.
            "CONFAB_RECONCILE_INTERVAL_MS": "100",
            # A SIGKILLed consumer's unacked events come back after the ack wait; 10 s instead of
            # 30 s keeps the audit's wait for the persister short.
            "CONFAB_ACK_WAIT_SECS": "10",
            # Every process runs on this one host and reads one clock: no skew to allow for, so
            # numbering's wait after Redis loses its data (the publish deadline plus twice the
            # skew, confab_core::sequence) is the deadline alone, plus 200 ms.
            "CONFAB_CLOCK_SKEW_MS": "100",
        }
        for name, value in tunables.items():
            env.setdefault(name, value)
        env.update(self.opts.extra_env)
        env.update(self.scenario_env)
        env.update({
            "DATABASE_URL": f"mysql://root@{HOST}:{self.servers.mysql_port}/confab",
            "REDIS_URL": self.servers.redis_url,
            "NATS_URL": ",".join(f"nats://{HOST}:{p}" for p in self.servers.nats_ports),
            # Migrations run once, before the services start (two apis migrating at once race).
            "CONFAB_MIGRATE": "false",
        })
        if self.servers.redis_cluster:
            # With it, REDIS_URL lists every node of the cluster.
            env["CONFAB_REDIS_CLUSTER"] = "true"
        if len(self.servers.nats_ports) > 1:
            env.setdefault("CONFAB_STREAM_REPLICAS", "3")
        return env

    def setting(self, name: str, default: str) -> str:
        return self.common_env.get(name) or default

    @property
    def stream(self) -> str:
        return self.setting("CONFAB_STREAM", "CONFAB_EVENTS")

    def service_env(self, name: str) -> Dict[str, str]:
        env = dict(self.common_env)
        env["CONFAB_ADMIN_ADDR"] = f"{HOST}:{self.admin_ports[name]}"
        if name.startswith("api"):
            env["CONFAB_HTTP_ADDR"] = f"{HOST}:{self.http_ports[name]}"
            env["CONFAB_SEARCH_URL"] = f"http://{HOST}:{self.search_port}"
        if name == "indexer":
            env["CONFAB_SEARCH_ADDR"] = f"{HOST}:{self.search_port}"
            env["CONFAB_INDEX_DIR"] = str(self.root / "index")
        return env

    @property
    def api_ports(self) -> List[int]:
        return [self.http_ports["api-a"], self.http_ports["api-b"]]

    # -- Confab services --------------------------------------------------------------------

    def binary(self, name: str) -> str:
        path = self.opts.bin_dir / BINARY_OF[name]
        if not os.access(path, os.X_OK):
            raise HarnessError(f"{path} is missing (build it, or pass --bin-dir)")
        return str(path)

    async def migrate(self) -> None:
        log_path = self.root / "migrate.log"
        with open(log_path, "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                self.binary("api-a"), "migrate", env=self.service_env("api-a"),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                code = await asyncio.wait_for(proc.wait(), 120)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                code = -1
        if code != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise HarnessError(f"confab-api migrate failed with code {code}:\n{tail}")

    async def start_services(self, names: List[str]) -> None:
        procs = []
        for name in names:
            port = self.admin_ports[name]
            proc = self.procs.add(name, [self.binary(name)], self.service_env(name),
                                  lambda port=port: self._admin_ready(port), cwd=self.root)
            proc.start()
            proc.wanted = True
            procs.append(proc)
        # Services that exit while starting are restarted a few times, as Kubernetes would: a
        # consumer or api that loses a start-up race (e.g. several services creating the same
        # replicated stream at once on nats-server 2.9, nats-io/nats-server#3677) exits and
        # succeeds on its next start. A service that never gets ready fails the scenario.
        for proc in procs:
            await wait_ready(proc, 120, max_restarts=STARTUP_RESTARTS)

    @staticmethod
    async def _admin_ready(port: int) -> bool:
        return await http_get_status(port, "/readyz") == 200

    # -- lifecycle --------------------------------------------------------------------------

    def start_watchdog(self) -> None:
        self.watchdog_task = asyncio.ensure_future(watchdog(self.procs))

    async def ensure_all_ready(self, timeout: float = 120) -> None:
        """Before the audit: every wanted process running and ready again."""
        for proc in self.procs.values():
            if not proc.wanted:
                continue
            async with proc.lock:
                if not proc.running():
                    proc.unexpected_exits += 1
                    log(f"{proc.name} is down before the audit; restarting it")
                    proc.start()
                await wait_ready(proc, timeout)

    def unexpected_exits(self) -> int:
        return sum(p.unexpected_exits for p in self.procs.values())

    async def teardown(self) -> None:
        if self.watchdog_task is not None:
            self.watchdog_task.cancel()
            try:
                await self.watchdog_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        # Services first, so they do not log a storm of connection errors about the others.
        for name in list(SERVICES) + [n for n in self.procs if n not in SERVICES]:
            if name in self.procs:
                self.procs[name].wanted = False
                self.procs[name].kill_now()

    # -- JetStream introspection (the servers answer; the stream's name is configuration) ---

    async def consumer_pending(self, consumer: str) -> Optional[Tuple[int, int]]:
        """(num_pending, num_ack_pending) of a durable consumer, or None when unknown."""
        return await self.servers.consumer_pending(self.stream, consumer)

    async def stream_leader(self, timeout: float = 20) -> str:
        """The server name of the events stream's current leader."""
        return await self.servers.stream_leader(self.stream, timeout)
