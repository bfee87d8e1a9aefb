"""Protocol clients, all standard library: HTTP/1.1 over asyncio streams, one request/reply of
the NATS text protocol (enough for the JetStream API), the `mysql` CLI in batch mode, Redis
commands over RESP, and the `redis-cli` tool (for its `--cluster` subcommands)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .harness import HOST

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


class RedisError(Exception):
    """An error reply (`-ERR …`, `-MOVED …`, `-CLUSTERDOWN …`) or a broken reply."""


async def _read_resp(reader: asyncio.StreamReader):
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise RedisError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode("utf-8", "replace")
    if kind == b"-":
        raise RedisError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return (await reader.readexactly(size + 2))[:-2].decode("utf-8", "replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [await _read_resp(reader) for _ in range(size)]
    raise RedisError(f"unexpected reply {line[:80]!r}")


async def redis_command(port: int, *args, timeout: float = 3.0):
    """One Redis command on a fresh connection to one node (no cluster redirection: a `MOVED`
    reply is a RedisError). Arguments are str, int or bytes; the reply comes back as str, int,
    None or a list of them."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))

    async def exchange():
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(b"".join(parts))
            await writer.drain()
            return await _read_resp(reader)
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


async def redis_cli(*args: str, timeout: float = 60) -> Tuple[int, str]:
    """Runs `redis-cli` (for its `--cluster` subcommands: create, reshard, check) and returns its
    exit status and its output, stdout and stderr together, without colour codes."""
    proc = await asyncio.create_subprocess_exec(
        "redis-cli", *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, ANSI_ESCAPE.sub("", out.decode("utf-8", "replace"))


async def jetstream_ready(port: int) -> bool:
    """JetStream answers its account info (in a cluster: only once a meta leader is elected)."""
    reply = await nats_request(port, "$JS.API.INFO", timeout=2)
    return "error" not in reply
