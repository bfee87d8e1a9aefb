"""What every part of the suite shares: the loopback host, progress logging, the harness's own
error, deadlines, free ports, finding server binaries, and the run's options."""

from __future__ import annotations

import os
import shutil
import socket
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
