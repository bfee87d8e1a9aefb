"""The child processes a scenario owns: starting them in their own process group, SIGKILLing
them, waiting until they are ready, and the watchdog that restarts what exits on its own."""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Optional, Set

from .clients import MySQLError, NatsError, RedisError
from .harness import Deadline, HarnessError, log

BACKTRACE_FRAME = re.compile(r"^\s+(\d+: |at )")

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

    def send_signal(self, signum: int) -> None:
        """Sends `signum` (SIGSTOP, SIGCONT) to the process group, under the same rule as
        kill_now: only while its leader is not reaped. A stopped process still counts as
        running (poll() does not report stops), so the watchdog leaves it alone."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

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
        except (asyncio.TimeoutError, OSError, ValueError, HarnessError, NatsError, MySQLError,
                RedisError):
            pass
        await asyncio.sleep(0.2)
    raise HarnessError(f"{proc.name} was not ready within {timeout:.0f}s", (proc,))


class ProcessTable(Dict[str, Proc]):
    """One scenario's processes by name, servers and Confab services alike; each logs to
    `<log_dir>/<name>.log`."""

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = log_dir

    def add(self, name: str, argv: List[str], env: Dict[str, str],
            ready: Callable[[], Awaitable[bool]], cwd: Optional[Path] = None) -> Proc:
        proc = Proc(name, argv, env, self.log_dir / f"{name}.log", ready, cwd)
        self[name] = proc
        return proc


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
