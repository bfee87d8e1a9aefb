#!/usr/bin/env python3
"""Confab chaos suite: fault injection against the real binaries, then an audit of every
acknowledged write.

Each scenario starts its own private MariaDB, Redis and NATS (JetStream) on free loopback ports
under a temporary directory, runs the real `confab-api` (two replicas), `confab-persister`,
`confab-indexer` and `confab-counter-reconciler` binaries as separate OS processes, drives
concurrent writers against both api replicas while it SIGKILLs and restarts processes, and then
checks MySQL (through the `mysql` CLI) and the search API against what the writers were told.

Only the Python standard library is used; all traffic goes to 127.0.0.1. See README.md beside
this file for the scenarios, the options and how to read the summary lines.

    python3 tests/chaos/chaos.py --short --scenario all
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Optional, Set, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
SERVICES = ("api-a", "api-b", "persister", "indexer", "counter-reconciler")
BINARY_OF = {
    "api-a": "confab-api",
    "api-b": "confab-api",
    "persister": "confab-persister",
    "indexer": "confab-indexer",
    "counter-reconciler": "confab-counter-reconciler",
}
SCENARIOS = ("faults", "redis-loss-lagging", "cluster")
STARTUP_RESTARTS = 3
BACKTRACE_FRAME = re.compile(r"^\s+(\d+: |at )")
STARTED = time.monotonic()


# ---------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the summary lines."""
    print(f"[chaos +{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    """The harness itself could not do its job (not a finding about Confab)."""

    def __init__(self, message: str, procs: Tuple["Proc", ...] = ()):
        super().__init__(message)
        self.procs = procs


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


_TAKEN_PORTS: Set[int] = set()


def free_port() -> int:
    """A free loopback port, chosen by the kernel (bind to port 0). Ports handed out earlier in
    this run are never handed out again, so a restarted process always finds its own port."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _TAKEN_PORTS:
            _TAKEN_PORTS.add(port)
            return port
    raise HarnessError("could not find a free port")


def percentile(sorted_values: List[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    # Nearest rank: the smallest value with at least p % of the values at or below it.
    rank = math.ceil(p / 100.0 * len(sorted_values)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, rank))]


def which(name: str, *fallbacks: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    return None


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------

# Every child that may still be running, so that exit (normal, exception, Ctrl-C, SIGTERM) can
# kill them all: a chaos run must never leave servers behind.
_LIVE: Set["Proc"] = set()


def kill_all_children() -> None:
    for proc in list(_LIVE):
        proc.kill_now()


atexit.register(kill_all_children)


class Proc:
    """One child process we own. It runs in its own session (and so its own process group), so a
    SIGKILL of the group hits exactly it and whatever it spawned, and nothing of ours. Output is
    appended to one log file across restarts, with a marker line per start."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str], log_path: Path,
                 ready: Callable[[], Awaitable[bool]], cwd: Optional[Path] = None):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.ready = ready
        self.cwd = cwd
        self.popen: Optional[subprocess.Popen] = None
        # Whether the process should be running: the watchdog restarts a wanted process that
        # exited on its own (as an orchestrator would), never one that is not wanted.
        self.wanted = False
        # Held by whoever is deliberately stopping/starting the process (a fault, the
        # watchdog), so the two never race.
        self.lock = asyncio.Lock()
        self.unexpected_exits = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n=== chaos: starting {self.name} at {time.strftime('%H:%M:%S')} ===\n"
                           .encode())
            log_file.flush()
            self.popen = subprocess.Popen(
                self.argv, env=self.env, cwd=str(self.cwd) if self.cwd else None,
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True)
        _LIVE.add(self)

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> Optional[int]:
        return None if self.popen is None else self.popen.poll()

    def kill_now(self) -> None:
        """SIGKILL the process group and reap the leader. Only signals a group whose leader is
        not reaped yet: a reaped leader's id could belong to someone else by now."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _LIVE.discard(self)

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError as error:
            return f"(no log: {error})"
        # RUST_BACKTRACE frames would push the error itself out of the tail.
        kept = [line for line in text.splitlines() if not BACKTRACE_FRAME.match(line)]
        return "\n".join(kept[-lines:])


async def wait_ready(proc: Proc, timeout: float, max_restarts: Optional[int] = None) -> None:
    """Polls the process's readiness check until it passes. A process that exits meanwhile is
    restarted, as an orchestrator would, and counted; after `max_restarts` such exits (0 for
    servers that must simply start) it is a harness error: its binary or configuration is
    wrong."""
    deadline = Deadline(timeout)
    started = time.monotonic()
    restarts = 0
    while not deadline.expired():
        if not proc.running():
            code = proc.returncode()
            if max_restarts is not None and restarts >= max_restarts:
                raise HarnessError(f"{proc.name} exited with code {code} before it became ready"
                                   f" ({restarts} restarts)", (proc,))
            restarts += 1
            proc.unexpected_exits += 1
            log(f"{proc.name} exited (code {code}) while starting; restarting it")
            await asyncio.sleep(min(1.0, deadline.remaining()))
            proc.start()
            continue
        try:
            if await asyncio.wait_for(proc.ready(), timeout=5):
                waited = time.monotonic() - started
                if waited > 5:
                    # Slow recoveries are findings in themselves: say who and how long.
                    log(f"{proc.name} became ready after {waited:.1f}s")
                return
        except (asyncio.TimeoutError, OSError, ValueError, HarnessError, NatsError, MySQLError):
            pass
        await asyncio.sleep(0.2)
    raise HarnessError(f"{proc.name} was not ready within {timeout:.0f}s", (proc,))


async def kill_and_restart(proc: Proc, down_for: float, ready_timeout: float) -> None:
    """The basic fault: SIGKILL, stay down for a moment, start again on the same port and data,
    and wait until it is ready (so faults do not pile up on one another)."""
    async with proc.lock:
        proc.kill_now()
        await asyncio.sleep(down_for)
        proc.start()
        await wait_ready(proc, ready_timeout)


async def watchdog(procs: Dict[str, Proc]) -> None:
    """Restarts wanted processes that exited on their own. Consumers are designed to exit when
    their NATS message stream closes and rely on their orchestrator to restart them; this is that
    orchestrator. Looks at the live dict, so processes started later are watched too. Runs until
    cancelled."""
    while True:
        await asyncio.sleep(0.5)
        for proc in list(procs.values()):
            if not proc.wanted or proc.lock.locked() or proc.running() or proc.popen is None:
                continue
            async with proc.lock:
                if proc.running():
                    continue
                proc.unexpected_exits += 1
                log(f"{proc.name} exited on its own (code {proc.returncode()}); restarting it")
                await asyncio.sleep(1.0)
                proc.start()
                try:
                    await wait_ready(proc, 60)
                except HarnessError as error:
                    log(f"watchdog: {error}")


# ---------------------------------------------------------------------------------------------
# Protocol clients: HTTP/1.1, the NATS text protocol, the mysql CLI, Redis PING
# ---------------------------------------------------------------------------------------------


class HttpError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body.decode("utf-8")) if self.body else None


class HttpClient:
    """A minimal HTTP/1.1 keep-alive client for one host:port over asyncio streams. One request at
    a time; any error or timeout drops the connection (its state is unknown, e.g. a late response
    could still arrive on it), and the next request reconnects."""

    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - closing a broken socket may fail in many ways
                pass
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: Optional[bytes] = None,
                      headers: Optional[Dict[str, str]] = None) -> Response:
        try:
            return await asyncio.wait_for(self._exchange(method, path, body, headers or {}),
                                          self.timeout)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, method: str, path: str, body: Optional[bytes],
                        headers: Dict[str, str]) -> Response:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        await self.writer.drain()

        status_line = await self.reader.readline()
        if not status_line:
            raise HttpError("connection closed before a response")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise HttpError(f"bad status line {status_line!r}")
        status = int(parts[1])
        response_headers: Dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        keep = response_headers.get("connection", "").lower() != "close"
        if response_headers.get("transfer-encoding", "").lower() == "chunked":
            data = await self._read_chunked()
        elif "content-length" in response_headers:
            data = await self.reader.readexactly(int(response_headers["content-length"]))
        elif status in (204, 304) or method == "HEAD":
            data = b""
        else:
            data = await self.reader.read()
            keep = False
        if not keep:
            self.close()
        return Response(status, response_headers, data)

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        chunks = []
        while True:
            size_line = await self.reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


async def http_get_status(port: int, path: str, timeout: float = 3.0) -> int:
    client = HttpClient(port, timeout)
    try:
        return (await client.request("GET", path)).status
    finally:
        client.close()


class NatsError(Exception):
    pass


async def nats_request(port: int, subject: str, payload: bytes = b"", timeout: float = 3.0) -> dict:
    """One request/reply over the raw NATS text protocol (a fresh connection each time): enough
    for the JetStream API ($JS.API.…), whose replies are JSON."""

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict:
        info = await reader.readline()
        if not info.startswith(b"INFO"):
            raise NatsError(f"unexpected greeting {info[:80]!r}")
        inbox = f"_INBOX.chaos.{uuid.uuid4().hex}"
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "name": "confab-chaos"}
        # NATS handles a connection's protocol lines in order, so the SUB is in place before the
        # request is published.
        writer.write(f"CONNECT {json.dumps(connect)}\r\nSUB {inbox} 1\r\n"
                     f"PUB {subject} {inbox} {len(payload)}\r\n".encode() + payload + b"\r\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                raise NatsError("connection closed")
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
                await writer.drain()
            elif line.startswith(b"-ERR"):
                raise NatsError(line.decode("latin-1").strip())
            elif line.startswith(b"MSG "):
                size = int(line.split()[-1])
                data = await reader.readexactly(size + 2)
                return json.loads(data[:size])
            elif line.startswith(b"HMSG "):
                fields = line.split()
                header_len, total = int(fields[-2]), int(fields[-1])
                data = await reader.readexactly(total + 2)
                status_line = data[:header_len].split(b"\r\n", 1)[0]
                if total == header_len:  # a status-only message: 503 = no responders
                    raise NatsError(f"no reply: {status_line.decode('latin-1')}")
                return json.loads(data[header_len:total])
            # +OK, PONG and INFO updates are ignored.

    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        return await asyncio.wait_for(exchange(reader, writer), timeout)
    finally:
        writer.close()


class MySQLError(Exception):
    pass


_UNESCAPE = {"n": "\n", "t": "\t", "\\": "\\", "0": "\0", "r": "\r", "b": "\b", "Z": "\x1a"}


def mysql_unescape(value: str) -> str:
    """`mysql -B` escapes tabs, newlines and backslashes in values."""
    if "\\" not in value:
        return value
    return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), value)


class MySQL:
    """Queries the private MariaDB with the ordinary `mysql` CLI, in batch mode."""

    def __init__(self, port: int, database: Optional[str] = None):
        self.port = port
        self.database = database

    async def query(self, sql: str, timeout: float = 60) -> List[List[str]]:
        argv = ["mysql", "--no-defaults", "--protocol=TCP", f"-h{HOST}", f"-P{self.port}",
                "-uroot", "-N", "-B", "--connect-timeout=5"]
        if self.database:
            argv += ["-D", self.database]
        argv += ["-e", sql]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            raise MySQLError(err.decode("utf-8", "replace").strip())
        return [[mysql_unescape(col) for col in line.split("\t")]
                for line in out.decode("utf-8").split("\n") if line]


async def redis_ping(port: int) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 2)).startswith(b"+PONG")
    finally:
        writer.close()


async def jetstream_ready(port: int) -> bool:
    """JetStream answers its account info (in a cluster: only once a meta leader is elected)."""
    reply = await nats_request(port, "$JS.API.INFO", timeout=2)
    return "error" not in reply


# ---------------------------------------------------------------------------------------------
# One scenario's environment: private backing services and the Confab services
# ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    bin_dir: Path
    writers: int
    short: bool
    duration: Optional[float]
    keep: bool
    seed: int
    request_timeout: float
    retries: int
    search_sample: int
    audit_timeout: Optional[float]
    extra_env: Dict[str, str]


class Environment:
    """Private MariaDB, Redis and NATS (one node or a three-node JetStream cluster), on free
    loopback ports, each with its own data directory under `root`, plus the Confab services."""

    def __init__(self, opts: Options, root: Path, scenario_env: Dict[str, str], nats_nodes: int):
        self.opts = opts
        self.root = root
        self.scenario_env = scenario_env
        self.procs: Dict[str, Proc] = {}
        self.mysql_port = free_port()
        self.redis_port = free_port()
        self.nats_ports = [free_port() for _ in range(nats_nodes)]
        self.nats_cluster_ports = [free_port() for _ in range(nats_nodes)] if nats_nodes > 1 else []
        self.http_ports = {"api-a": free_port(), "api-b": free_port()}
        self.admin_ports = {name: free_port() for name in SERVICES}
        self.search_port = free_port()
        self.db = MySQL(self.mysql_port, "confab")
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
        for name in ("DATABASE_URL", "REDIS_URL", "NATS_URL", "ELASTICSEARCH_URL",
                     "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
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
        }
        for name, value in tunables.items():
            env.setdefault(name, value)
        env.update(self.opts.extra_env)
        env.update(self.scenario_env)
        env.update({
            "DATABASE_URL": f"mysql://root@{HOST}:{self.mysql_port}/confab",
            "REDIS_URL": f"redis://{HOST}:{self.redis_port}",
            "NATS_URL": ",".join(f"nats://{HOST}:{p}" for p in self.nats_ports),
            # Migrations run once, before the services start (two apis migrating at once race).
            "CONFAB_MIGRATE": "false",
        })
        if len(self.nats_ports) > 1:
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

    # -- backing services -------------------------------------------------------------------

    async def start_backing(self) -> None:
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
        proc = self._add("mariadb", argv, dict(os.environ), self._mariadb_ready)
        await self._launch(proc, 60)

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
        proc = self._add("redis", argv, dict(os.environ), lambda: redis_ping(self.redis_port))
        await self._launch(proc, 30)

    async def _start_nats(self) -> None:
        binary = which("nats-server", "/usr/sbin/nats-server") or "nats-server"
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
            self._add(self.nats_name(i), argv, dict(os.environ),
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
            proc = self._add(name, [self.binary(name)], self.service_env(name),
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

    def _add(self, name: str, argv: List[str], env: Dict[str, str],
             ready: Callable[[], Awaitable[bool]], cwd: Optional[Path] = None) -> Proc:
        proc = Proc(name, argv, env, self.root / f"{name}.log", ready, cwd)
        self.procs[name] = proc
        return proc

    async def _launch(self, proc: Proc, timeout: float) -> None:
        proc.start()
        proc.wanted = True
        await wait_ready(proc, timeout, max_restarts=0)

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

    async def consumer_pending(self, consumer: str) -> Optional[Tuple[int, int]]:
        """(num_pending, num_ack_pending) of a durable consumer, or None when unknown."""
        try:
            info = await self.js_api(f"$JS.API.CONSUMER.INFO.{self.stream}.{consumer}")
        except NatsError:
            return None
        if "error" in info:
            return None
        return int(info.get("num_pending", 0)), int(info.get("num_ack_pending", 0))

    async def stream_leader(self, timeout: float = 20) -> str:
        """The server name of the events stream's current leader."""
        deadline = Deadline(timeout)
        while not deadline.expired():
            try:
                info = await self.js_api(f"$JS.API.STREAM.INFO.{self.stream}")
                leader = (info.get("cluster") or {}).get("leader")
                if leader:
                    return leader
            except NatsError:
                pass
            await asyncio.sleep(0.3)
        raise HarnessError(f"stream {self.stream} has no leader after {timeout:.0f}s",
                           tuple(self.nats_procs()))


# ---------------------------------------------------------------------------------------------
# Load: writers and the ledger of everything they were told
# ---------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One logical request, however many attempts it took."""
    kind: str                      # "application", "chat", "message" or "patch"
    key: str                       # Idempotency-Key (POST); also identifies the request
    chat: int = 0
    number: Optional[int] = None   # the number a 201 gave, or the message a PATCH targets
    body: str = ""
    attempts: int = 0
    outcome: str = "pending"       # acked | unavailable | rejected
    final_status: str = ""


@dataclass
class MessageState:
    """What the row of an acknowledged message may hold: the last acknowledged body, or the body
    of a PATCH whose outcome is unknown (it timed out or failed with a 5xx, and may have been
    published all the same)."""
    creator: Request
    latest_body: str
    unconfirmed: Set[str] = field(default_factory=set)


class Ledger:
    """The ground truth the audit checks MySQL against: every answer the writers got."""

    def __init__(self) -> None:
        self.requests: List[Request] = []
        self.chat_acks: Dict[int, List[Request]] = collections.defaultdict(list)
        self.message_acks: Dict[Tuple[int, int], List[Request]] = collections.defaultdict(list)
        self.messages: Dict[Tuple[int, int], MessageState] = {}
        self.creation_by_body: Dict[str, Request] = {}
        self.attempt_statuses: collections.Counter = collections.Counter()
        self.latencies_ms: List[float] = []
        self.unavailable = 0
        self.rejected: collections.Counter = collections.Counter()
        self.patches_acked = 0

    def attempt(self, outcome: str, elapsed: float) -> None:
        self.attempt_statuses[outcome] += 1
        self.latencies_ms.append(elapsed * 1000.0)

    def ack_chat(self, req: Request, number: int) -> None:
        req.outcome, req.number = "acked", number
        self.chat_acks[number].append(req)

    def ack_message(self, req: Request, number: int) -> None:
        req.outcome, req.number = "acked", number
        key = (req.chat, number)
        self.message_acks[key].append(req)
        # The first acknowledgement defines the message; a second one for the same (chat,
        # number) is a duplicate number, reported by the audit.
        self.messages.setdefault(key, MessageState(req, req.body))

    def ack_patch(self, req: Request) -> None:
        req.outcome = "acked"
        self.patches_acked += 1
        self.messages[(req.chat, req.number)].latest_body = req.body

    def fail(self, req: Request) -> None:
        req.outcome = "unavailable"
        self.unavailable += 1
        if req.kind == "patch":
            self.messages[(req.chat, req.number)].unconfirmed.add(req.body)

    def reject(self, req: Request) -> None:
        req.outcome = "rejected"
        self.rejected[f"{req.kind}:{req.final_status}"] += 1

    @property
    def acknowledged(self) -> int:
        return sum(len(v) for v in self.chat_acks.values()) + \
            sum(len(v) for v in self.message_acks.values())


def unique_word(tag: str, seq: int, edit: int = 0) -> str:
    """A word that occurs in exactly one body: `u` only ever starts it and `z` ends it, so no
    word is a substring of another (u1x1z is not in u1x10z, u11x1z or u1x1e2z)."""
    return f"u{tag}x{seq}e{edit}z" if edit else f"u{tag}x{seq}z"


def message_body(tag: str, seq: int, edit: int = 0) -> str:
    prefix = f"w{tag}-{seq}" + (f" edit{edit}" if edit else "")
    return f"{prefix} lorem ipsum {unique_word(tag, seq, edit)} dolor sit amet consectetur"


WORD_RE = re.compile(r"\bu[a-z0-9]+?x\d+(?:e\d+)?z\b")


@dataclass
class Context:
    """What the load and the audit share for one scenario."""
    env: Environment
    opts: Options
    ledger: Ledger
    load_seconds: float = 0.0
    reseeds: Optional[int] = None
    collisions: Optional[int] = None
    token: str = ""
    chats: List[int] = field(default_factory=list)
    idempotency: Optional[bool] = None


class ApiPool:
    """The api replicas as seen by one task: a keep-alive connection to each."""

    def __init__(self, ports: List[int], timeout: float):
        self.clients = [HttpClient(port, timeout) for port in ports]

    def close(self) -> None:
        for client in self.clients:
            client.close()


def retryable(outcome: str, response: Optional[Response]) -> bool:
    """Network errors, timeouts and 5xx are retried with the same Idempotency-Key; so are 429
    (should the limiter refuse after all) and 409s other than the chat quota (an idempotent
    request that is still in progress elsewhere)."""
    if outcome in ("timeout", "conn_error"):
        return True
    status = int(outcome)
    if status >= 500 or status == 429:
        return True
    if status == 409 and response is not None:
        try:
            return (response.json() or {}).get("error", {}).get("code") != "chat_limit_reached"
        except (ValueError, AttributeError):
            return True
    return False


async def send(ctx: Context, pool: ApiPool, req: Request, method: str, path: str, payload: dict,
               expect: int, first_api: int, with_key: bool = True) -> Optional[Response]:
    """Sends one logical request, retrying the same request (same Idempotency-Key, same body) on
    network errors, timeouts and 5xx with exponential backoff, each attempt on the next api
    replica. Returns the final response, or None when every attempt failed."""
    body = json.dumps(payload).encode()
    headers = {"Idempotency-Key": req.key} if with_key else {}
    response: Optional[Response] = None
    for attempt in range(ctx.opts.retries + 1):
        client = pool.clients[(first_api + attempt) % len(pool.clients)]
        started = time.monotonic()
        response = None
        try:
            response = await client.request(method, path, body, headers)
            outcome = str(response.status)
        except asyncio.TimeoutError:
            outcome = "timeout"
        except (OSError, HttpError, asyncio.IncompleteReadError, ValueError):
            outcome = "conn_error"
        req.attempts += 1
        ctx.ledger.attempt(outcome, time.monotonic() - started)
        req.final_status = outcome
        if response is not None and response.status == expect:
            return response
        if not retryable(outcome, response):
            return response
        if attempt < ctx.opts.retries:
            delay = min(2.0, 0.2 * (2 ** attempt)) * random.uniform(0.75, 1.25)
            if response is not None and response.headers.get("retry-after", "").isdigit():
                delay = max(delay, min(2.0, float(response.headers["retry-after"])))
            await asyncio.sleep(delay)
    return None


async def scrape_numbering_counters(ctx: Context) -> None:
    """Sums the apis' re-seeds (`confab_sequence_reseeds_total`, a parent's first number
    included) and publish collisions (`confab_events_published_total{outcome="collision"}`): the
    evidence that a run exercised sequence recovery. Counters start at zero with each api
    process, so after an api restart they cover only its latest life."""
    reseeds = collisions = 0
    for name in ("api-a", "api-b"):
        client = HttpClient(ctx.env.admin_ports[name], 5)
        try:
            text = (await client.request("GET", "/metrics")).body.decode("utf-8", "replace")
        except (OSError, HttpError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return
        finally:
            client.close()
        for line in text.splitlines():
            value = line.rsplit(" ", 1)[-1]
            if line.startswith("confab_sequence_reseeds_total"):
                reseeds += int(float(value))
            elif line.startswith("confab_events_published_total") and 'outcome="collision"' in line:
                collisions += int(float(value))
    ctx.reseeds, ctx.collisions = reseeds, collisions


def messages_path(ctx: Context, chat: int) -> str:
    return f"/api/v1/applications/{ctx.token}/chats/{chat}/messages"


async def create_message(ctx: Context, pool: ApiPool, chat: int, tag: str, seq: int,
                         first_api: int) -> Optional[Request]:
    req = Request("message", str(uuid.uuid4()), chat=chat, body=message_body(tag, seq))
    ctx.ledger.requests.append(req)
    ctx.ledger.creation_by_body[req.body] = req
    response = await send(ctx, pool, req, "POST", messages_path(ctx, chat), {"body": req.body},
                          201, first_api)
    if response is None:
        ctx.ledger.fail(req)
        return None
    if response.status != 201:
        ctx.ledger.reject(req)
        return None
    ctx.ledger.ack_message(req, int(response.json()["number"]))
    return req


async def patch_message(ctx: Context, pool: ApiPool, chat: int, number: int, tag: str, seq: int,
                        edit: int, first_api: int) -> None:
    # PATCH sets a body, so repeating it is harmless; it carries no Idempotency-Key.
    req = Request("patch", str(uuid.uuid4()), chat=chat, number=number,
                  body=message_body(tag, seq, edit))
    ctx.ledger.requests.append(req)
    response = await send(ctx, pool, req, "PATCH", f"{messages_path(ctx, chat)}/{number}",
                          {"body": req.body}, 200, first_api, with_key=False)
    if response is None:
        ctx.ledger.fail(req)
    elif response.status == 200:
        ctx.ledger.ack_patch(req)
    else:
        ctx.ledger.reject(req)


async def writer(ctx: Context, wid: int, stop: asyncio.Event, patch_ratio: float = 0.1) -> None:
    """Posts messages with unique bodies to random chats and sometimes edits one of its own
    acknowledged messages, until `stop`; finishes the request in hand (with its retries)."""
    rng = random.Random(ctx.opts.seed * 7919 + wid)
    pool = ApiPool(ctx.env.api_ports, ctx.opts.request_timeout)
    mine: List[Tuple[int, int, int]] = []   # (chat, number, seq) of acknowledged messages
    edits: Dict[int, int] = collections.defaultdict(int)
    seq = 0
    try:
        while not stop.is_set():
            first_api = (wid + seq) % 2
            if mine and rng.random() < patch_ratio:
                chat, number, of_seq = rng.choice(mine)
                edits[of_seq] += 1
                await patch_message(ctx, pool, chat, number, str(wid), of_seq, edits[of_seq],
                                    first_api)
            else:
                seq += 1
                chat = rng.choice(ctx.chats)
                req = await create_message(ctx, pool, chat, str(wid), seq, first_api)
                if req is not None:
                    mine.append((chat, req.number, seq))
    finally:
        pool.close()


async def progress(ctx: Context, every: float = 5.0) -> None:
    while True:
        await asyncio.sleep(every)
        s = ctx.ledger.attempt_statuses
        log(f"load: acknowledged={ctx.ledger.acknowledged} 503s={s['503']} "
            f"timeouts={s['timeout']} conn_errors={s['conn_error']} "
            f"unavailable={ctx.ledger.unavailable}")


async def setup_application(ctx: Context, chats: int, scenario: str) -> None:
    """Creates the application and its chats (through both replicas) before any fault."""
    pool = ApiPool(ctx.env.api_ports, ctx.opts.request_timeout)
    try:
        req = Request("application", str(uuid.uuid4()))
        response = await send(ctx, pool, req, "POST", "/api/v1/applications",
                              {"name": f"chaos-{scenario}"}, 201, 0)
        if response is None or response.status != 201:
            raise HarnessError(f"creating the application failed: "
                               f"{response.status if response else req.final_status} "
                               f"{response.body[:300] if response else ''}")
        ctx.token = response.json()["token"]
        if not re.fullmatch(r"[0-9a-f]{48}", ctx.token):
            raise HarnessError(f"unexpected token format {ctx.token!r}")
        for i in range(chats):
            req = Request("chat", str(uuid.uuid4()))
            ctx.ledger.requests.append(req)
            response = await send(ctx, pool, req, "POST", f"/api/v1/applications/{ctx.token}/chats",
                                  {}, 201, i % 2)
            if response is None or response.status != 201:
                raise HarnessError(f"creating a chat failed: {req.final_status}")
            number = int(response.json()["number"])
            ctx.ledger.ack_chat(req, number)
            ctx.chats.append(number)
    finally:
        pool.close()


async def warm_up(ctx: Context) -> None:
    """One message into every chat through every replica, so each replica knows the chats (its
    in-process cache) before Redis, which remembers chats not yet persisted, is ever lost."""
    pool = ApiPool(ctx.env.api_ports, ctx.opts.request_timeout)
    try:
        for api in range(len(ctx.env.api_ports)):
            for chat in ctx.chats:
                if await create_message(ctx, pool, chat, f"a{api}", chat, api) is None:
                    raise HarnessError(f"warm-up message to chat {chat} via api {api} failed")
    finally:
        pool.close()


async def probe_idempotency(ctx: Context) -> bool:
    """Sends one message twice with the same Idempotency-Key and body, through each replica:
    the server supports the key when the second answer carries the same number. The request is
    recorded as one logical request with two attempts, so without support its second row is
    reported as a duplicated body, not as a failure."""
    pool = ApiPool(ctx.env.api_ports, ctx.opts.request_timeout)
    try:
        chat = ctx.chats[0]
        req = await create_message(ctx, pool, chat, "p", 1, 0)
        if req is None:
            raise HarnessError("idempotency probe: the first request failed")
        again = await send(ctx, pool, req, "POST", messages_path(ctx, chat), {"body": req.body},
                           201, 1)
        try:
            return again is not None and again.status == 201 and \
                int(again.json()["number"]) == req.number
        except (ValueError, KeyError, TypeError):
            return False
    finally:
        pool.close()


async def wait_chats_persisted(ctx: Context, timeout: float = 60) -> None:
    deadline = Deadline(timeout)
    while not deadline.expired():
        try:
            rows = await ctx.env.db.query(
                "SELECT c.number FROM chats c JOIN applications a ON a.id = c.application_id "
                f"WHERE a.token = '{ctx.token}'")
            if {int(r[0]) for r in rows} >= set(ctx.chats):
                return
        except MySQLError:
            pass
        await asyncio.sleep(0.3)
    raise HarnessError("the chats were not persisted in time", (ctx.env.procs["persister"],))


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


async def run_load(ctx: Context, duration: float,
                   chaos: Callable[[float], Awaitable[None]]) -> None:
    """Runs the writers for `duration` seconds while `chaos(end)` injects faults, then stops the
    writers and waits for their last requests."""
    stop = asyncio.Event()
    started = time.monotonic()
    end = started + duration
    writers = [asyncio.ensure_future(writer(ctx, wid, stop)) for wid in range(ctx.opts.writers)]
    reporter = asyncio.ensure_future(progress(ctx))
    try:
        await chaos(end)
        remaining = end - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
    except BaseException:
        # Interrupted or failed: do not wait for the writers' retries, stop them now.
        for task in writers:
            task.cancel()
        raise
    finally:
        stop.set()
        log("load: stopping writers")
        results = await asyncio.gather(*writers, return_exceptions=True)
        ctx.load_seconds = time.monotonic() - started
        reporter.cancel()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise HarnessError(f"a writer crashed: {result!r}")


# ---------------------------------------------------------------------------------------------
# Audit
# ---------------------------------------------------------------------------------------------


@dataclass
class Findings:
    lost: List[str] = field(default_factory=list)
    misplaced: List[str] = field(default_factory=list)
    duplicated: List[str] = field(default_factory=list)
    duplicated_bodies: List[str] = field(default_factory=list)
    extra_rows: int = 0


async def fetch_rows(ctx: Context, app_id: int) -> Tuple[Set[int], Dict[Tuple[int, int], str]]:
    chats = {int(r[0]) for r in await ctx.env.db.query(
        f"SELECT number FROM chats WHERE application_id = {app_id}")}
    rows = {}
    for chat, number, body in await ctx.env.db.query(
            "SELECT c.number, m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id "
            f"WHERE c.application_id = {app_id}", timeout=120):
        rows[(int(chat), int(number))] = body
    return chats, rows


def analyse(ledger: Ledger, chats: Set[int], rows: Dict[Tuple[int, int], str],
            idempotency: bool) -> Findings:
    """Compares MySQL with the ledger."""
    found = Findings()
    for number, reqs in ledger.chat_acks.items():
        if len(reqs) > 1:
            found.duplicated.append(f"chat {number} acknowledged to {len(reqs)} requests")
        if number not in chats:
            found.lost.append(f"chat {number}")
    for key, reqs in ledger.message_acks.items():
        chat, number = key
        if len({r.key for r in reqs}) > 1:
            # Two different requests were told they created the same message.
            bodies = " | ".join(r.body[:40] for r in reqs)
            found.duplicated.append(f"message {chat}/{number} acknowledged to {len(reqs)} "
                                    f"requests ({bodies})")
            continue
        if key not in rows:
            found.lost.append(f"message {chat}/{number} ({reqs[0].body[:40]})")
            continue
        state = ledger.messages[key]
        if rows[key] != state.latest_body and rows[key] not in state.unconfirmed:
            found.misplaced.append(f"message {chat}/{number}: stored {rows[key][:50]!r}, "
                                   f"expected {state.latest_body[:50]!r}")
    # The same body under more than one number: a request stored twice.
    by_body: Dict[str, List[Tuple[int, int]]] = collections.defaultdict(list)
    for key, body in rows.items():
        by_body[body].append(key)
    for body, keys in by_body.items():
        if len(keys) < 2:
            continue
        req = ledger.creation_by_body.get(body)
        extra = len(keys) - 1
        where = ", ".join(f"{c}/{n}" for c, n in sorted(keys))
        if req is not None and req.attempts > 1 and not idempotency:
            # A retry of a request the server may have handled already, with a server that
            # ignores Idempotency-Key: an expected extra row, not a defect of the numbering.
            found.duplicated_bodies.extend([f"{body[:40]!r} at {where}"] * extra)
        else:
            found.duplicated.extend([f"body {body[:40]!r} stored at {where}"] * extra)
    found.extra_rows = len(set(rows) - set(ledger.message_acks))
    return found


async def wait_for_persister(ctx: Context, app_id: int, timeout: float):
    """Polls MySQL until every acknowledged write is there with its expected body, or the
    persister's consumer has drained (nothing pending, nothing unacked: what is missing then
    will not come), or the deadline passes."""
    deadline = Deadline(timeout)
    consumer = ctx.env.setting("CONFAB_PERSISTER_CONSUMER", "confab-persister")
    drained_polls = 0
    while True:
        chats, rows = await fetch_rows(ctx, app_id)
        findings = analyse(ctx.ledger, chats, rows, bool(ctx.idempotency))
        if not findings.lost and not findings.misplaced:
            return chats, rows, True
        pending = await ctx.env.consumer_pending(consumer)
        drained_polls = drained_polls + 1 if pending == (0, 0) else 0
        if drained_polls >= 3 or deadline.expired():
            log(f"persister wait ended with {len(findings.lost)} missing and "
                f"{len(findings.misplaced)} differing rows (consumer pending={pending})")
            return chats, rows, False
        await asyncio.sleep(1.0)


async def wait_for_counts(ctx: Context, timeout: float) -> Tuple[bool, List[str]]:
    """Polls until every count equals the rows it counts (the counter reconciler's job)."""
    deadline = Deadline(timeout)
    mismatches: List[str] = []
    while True:
        mismatches = []
        for number, stored, actual in await ctx.env.db.query(
                "SELECT c.number, c.messages_count, "
                "(SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id) FROM chats c"):
            if stored != actual:
                mismatches.append(f"chat {number}: messages_count={stored}, rows={actual}")
        for name, stored, actual in await ctx.env.db.query(
                "SELECT a.name, a.chats_count, "
                "(SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id) "
                "FROM applications a WHERE a.deleted_at IS NULL"):
            if stored != actual:
                mismatches.append(f"application {name}: chats_count={stored}, rows={actual}")
        if not mismatches or deadline.expired():
            return not mismatches, mismatches
        await asyncio.sleep(0.5)


async def check_search(ctx: Context, rows: Dict[Tuple[int, int], str], candidates: List[Tuple[int, int]],
                       timeout: float) -> Tuple[int, List[str], List[str]]:
    """Every sampled message must be found by its unique word in its chat (polling for index
    lag until the deadline). An error answer is never 'not found': it fails the check."""
    rng = random.Random(ctx.opts.seed)
    sample = rng.sample(candidates, min(len(candidates), ctx.opts.search_sample))
    consumer = ctx.env.setting("CONFAB_INDEXER_CONSUMER", "confab-indexer")
    deadline = Deadline(timeout)
    # Give the indexer the chance to drain first; the polling below covers what remains.
    while not deadline.expired() and deadline.remaining() > timeout / 2:
        if await ctx.env.consumer_pending(consumer) == (0, 0):
            break
        await asyncio.sleep(0.5)

    pending: Dict[Tuple[int, int], str] = {}
    for key in sample:
        match = WORD_RE.search(rows[key])
        if match:
            pending[key] = match.group(0)
    errors: List[str] = []
    semaphore = asyncio.Semaphore(8)

    async def lookup(key: Tuple[int, int], word: str, client_index: int) -> str:
        chat, number = key
        path = (f"/api/v1/applications/{ctx.token}/chats/{chat}/messages/search"
                f"?query={urllib.parse.quote(word)}&per_page=500")
        async with semaphore:
            client = HttpClient(ctx.env.api_ports[client_index % 2], ctx.opts.request_timeout)
            try:
                for attempt in range(3):
                    try:
                        response = await client.request("GET", path)
                        break
                    except (OSError, HttpError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                        if attempt == 2:
                            return f"error: no response for {chat}/{number} {word}"
                        await asyncio.sleep(0.5)
            finally:
                client.close()
        if response.status != 200:
            return f"error: {response.status} {response.body[:200]!r} for {chat}/{number} {word}"
        hits = [h for h in (response.json() or []) if int(h.get("number", -1)) == number]
        if len(hits) > 1:
            return f"error: {chat}/{number} found {len(hits)} times"
        if hits and hits[0].get("body") == rows[key]:
            return "found"
        return "missing"

    while pending:
        keys = list(pending)
        results = await asyncio.gather(*(lookup(k, pending[k], i) for i, k in enumerate(keys)))
        for key, result in zip(keys, results):
            if result == "found":
                del pending[key]
            elif result.startswith("error"):
                errors.append(result)
                del pending[key]
        if not pending or deadline.expired():
            break
        await asyncio.sleep(1.0)
    missing = [f"{c}/{n} {w}" for (c, n), w in pending.items()]
    return len(sample), missing, errors


@dataclass
class AuditResult:
    findings: Findings
    caught_up: bool
    counts_ok: bool
    count_mismatches: List[str]
    search_ok: bool
    search_checked: int
    search_missing: List[str]
    search_errors: List[str]


async def audit(ctx: Context, timeouts: Dict[str, float]) -> AuditResult:
    env = ctx.env
    log("audit: waiting until every service is ready")
    await env.ensure_all_ready()
    app_rows = await env.db.query(f"SELECT id FROM applications WHERE token = '{ctx.token}'")
    if not app_rows:
        raise HarnessError("the application is missing from MySQL")
    app_id = int(app_rows[0][0])
    log("audit: waiting for the persister to catch up")
    chats, rows, caught_up = await wait_for_persister(ctx, app_id, timeouts["persist"])
    findings = analyse(ctx.ledger, chats, rows, bool(ctx.idempotency))
    log("audit: waiting for the counts to converge")
    counts_ok, mismatches = await wait_for_counts(ctx, timeouts["counts"])
    log("audit: searching")
    flagged = set()
    for line in findings.duplicated:
        match = re.match(r"message (\d+)/(\d+)", line)
        if match:
            flagged.add((int(match.group(1)), int(match.group(2))))
    candidates = sorted(key for key, state in ctx.ledger.messages.items()
                        if key in rows and key not in flagged
                        and (rows[key] == state.latest_body or rows[key] in state.unconfirmed))
    checked, missing, errors = await check_search(ctx, rows, candidates, timeouts["search"])
    return AuditResult(findings, caught_up, counts_ok, mismatches,
                       not missing and not errors and checked > 0, checked, missing, errors)


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


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
    (so MySQL knows no numbers), and Redis losing everything every three seconds."""
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
    await run_load(ctx, p.duration, lambda end: fault_schedule(faults, 3.0, 3.0, end, counter))
    log("starting the persister")
    await env.start_services(["persister"])


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


SCENARIO_SETUP = {
    "faults": ({}, 1, scenario_faults),
    "redis-loss-lagging": ({"CONFAB_DUPLICATE_WINDOW_SECS": "1"}, 1, scenario_redis_loss_lagging),
    "cluster": ({"CONFAB_STREAM_REPLICAS": "3"}, 3, scenario_cluster),
}


def summary_line(name: str, fields: Dict[str, object]) -> str:
    def fmt(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value:.1f}"
        if isinstance(value, str) and (not value or re.search(r"[\s\"=]", value)):
            return json.dumps(value)
        return str(value)
    return "chaos scenario=" + name + "".join(f" {k}={fmt(v)}" for k, v in fields.items())


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
        await env.start_backing()
        await env.migrate()
        await body(ctx, p, counter)
        await scrape_numbering_counters(ctx)
        result = await audit(ctx, p.timeouts)
    except HarnessError as failure:
        error = str(failure).splitlines()[0]
        log(f"HARNESS ERROR in {name}: {failure}")
        for proc in failure.procs:
            print(f"--- last lines of {proc.name} ({proc.log_path}) ---\n{proc.tail()}",
                  file=sys.stderr)
    except Exception as failure:  # noqa: BLE001 - any other failure is the harness's own
        error = f"{type(failure).__name__}: {failure}".splitlines()[0]
        log(f"HARNESS ERROR in {name}:\n{traceback.format_exc()}")
    finally:
        await env.teardown()

    s = ledger.attempt_statuses
    latencies = sorted(ledger.latencies_ms)
    attempts = sum(s.values())
    fields: Dict[str, object] = {
        "ok": False,
        "faults": counter.injected,
        "acknowledged": ledger.acknowledged,
    }
    if result is not None:
        f = result.findings
        fields.update({"lost": len(f.lost), "misplaced": len(f.misplaced),
                       "duplicated": len(f.duplicated),
                       "duplicated_bodies": len(f.duplicated_bodies)})
    fields.update({
        "unavailable": ledger.unavailable,
        "503s": s["503"],
        "share_503": f"{100.0 * s['503'] / attempts:.2f}%" if attempts else "0.00%",
        "timeouts": s["timeout"],
        "other": sum(ledger.rejected.values()),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else 0.0,
    })
    if result is not None:
        fields.update({"counts_ok": result.counts_ok, "search_ok": result.search_ok})
    fields.update({
        "idempotency": {True: "supported", False: "ignored", None: "unknown"}[ctx.idempotency],
        "reseeds": "?" if ctx.reseeds is None else ctx.reseeds,
        "collisions": "?" if ctx.collisions is None else ctx.collisions,
        "exits": env.unexpected_exits(),
        "load_s": round(ctx.load_seconds, 1),
        "elapsed_s": round(time.monotonic() - started, 1),
    })
    ok = False
    if result is not None:
        f = result.findings
        # duplicated_bodies is not a failure: analyse() only puts rows there when the server
        # ignores Idempotency-Key (with support, a retry stored twice counts as duplicated).
        ok = (not f.lost and not f.misplaced and not f.duplicated and result.counts_ok
              and result.search_ok)
        report_details(name, ctx, result, counter)
    else:
        fields["harness_error"] = error or "unknown"
    fields["ok"] = ok
    write_report(root, name, fields, result, ledger)
    print(summary_line(name, fields), flush=True)
    return ok


def report_details(name: str, ctx: Context, result: AuditResult, counter: FaultCounter) -> None:
    """The first examples of each finding, to stderr (the summary line only counts them)."""
    f = result.findings
    ledger = ctx.ledger
    log(f"{name}: faults injected: {', '.join(counter.labels) or 'none'}")
    log(f"{name}: patches acknowledged={ledger.patches_acked}, extra rows={f.extra_rows}, "
        f"persister caught up={result.caught_up}, rejected={dict(ledger.rejected)}, "
        f"attempt statuses={dict(ledger.attempt_statuses)}")
    log(f"{name}: search checked {result.search_checked} messages")
    for label, items in (("lost", f.lost), ("misplaced", f.misplaced),
                         ("duplicated", f.duplicated), ("duplicated_bodies", f.duplicated_bodies),
                         ("count mismatch", result.count_mismatches),
                         ("search missing", result.search_missing),
                         ("search error", result.search_errors)):
        for item in items[:5]:
            log(f"{name}: {label}: {item}")
        if len(items) > 5:
            log(f"{name}: {label}: … and {len(items) - 5} more")


def write_report(root: Path, name: str, fields: Dict[str, object], result: Optional[AuditResult],
                 ledger: Ledger) -> None:
    """A JSON report next to the logs (kept with --keep)."""
    report = {"scenario": name, "summary": fields,
              "attempt_statuses": dict(ledger.attempt_statuses),
              "rejected": dict(ledger.rejected)}
    if result is not None:
        report.update({k: getattr(result.findings, k)[:200]
                       for k in ("lost", "misplaced", "duplicated", "duplicated_bodies")})
        report.update({"count_mismatches": result.count_mismatches[:200],
                       "search_missing": result.search_missing[:200],
                       "search_errors": result.search_errors[:200]})
    try:
        (root / "report.json").write_text(json.dumps(report, indent=2, default=str))
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


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
                        help="seconds of load per scenario (default 45/30/45, --short 30/15/24)")
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


def check_prerequisites(opts: Options) -> List[str]:
    problems = []
    for tool, fallbacks in (("redis-server", ()), ("nats-server", ("/usr/sbin/nats-server",)),
                            ("mariadbd", ("/usr/sbin/mariadbd",)),
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
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    log("all scenarios passed")
    return 0


def main(argv: List[str]) -> int:
    opts, names = parse_args(argv)
    problems = check_prerequisites(opts)
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
