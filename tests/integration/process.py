"""
Subprocesses for the integration tests: free ports, deadline waits, stop by PID.

Nothing here sleeps to synchronise: every wait polls a condition (a port accepts, a
line was printed) until a deadline, and fails early, with the peer's output, when
the peer exits instead.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "LineReader",
    "Peer",
    "PeerError",
    "free_port",
    "ipv6_loopback",
    "port_open",
    "stop_pid",
    "wait_until",
]

# Ports are picked below the kernel's ephemeral range (32768-60999 by default), so an
# outgoing connection cannot take one between our check and the peer's bind, and
# away from the lab's 15000-15999.
_PORT_RANGE = (20000, 32000)
_POLL = 0.02


class PeerError(RuntimeError):
    """A peer did not start, or did not show what a test waited for, in time."""


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (containers sometimes have no IPv6)."""
    return _bindable("::1", 0)


def free_port(host: str = "127.0.0.1", *, also: Sequence[str] = ()) -> int:
    """A port nothing listens on at ``host`` (and at each of ``also``) right now."""
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(*_PORT_RANGE)
        if _bindable(host, port) and all(_bindable(h, port) for h in also):
            return port
    raise PeerError(f"no free port found on {host} in {_PORT_RANGE}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str,
    proc: subprocess.Popen[bytes] | None = None, output: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; fail if ``proc`` exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() > deadline:
            why = (f"exited with status {proc.returncode}" if exited and proc is not None
                   else f"timed out after {timeout:g}s")
            tail = output()[-4000:] if output is not None else ""
            raise PeerError(f"waiting for {what}: {why}\n--- output ---\n{tail}")
        time.sleep(_POLL)


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process by its PID, then SIGKILL if it ignores that."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        proc.wait(5)


class Peer:
    """A daemon started by a fixture: its output goes to ``log_path``."""

    def __init__(
        self, name: str, argv: Sequence[str | Path], log_path: Path, *,
        cwd: Path | None = None, env: Mapping[str, str] | None = None,
        extra_logs: Sequence[Path] = (),
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.extra_logs = list(extra_logs)
        with log_path.open("ab") as log:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=cwd, env=None if env is None else dict(env),
                start_new_session=True,  # a ^C to pytest must not reach the peers first
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """The peer's stdout and stderr, then its own log files (for failure messages)."""
        parts = []
        for path in [self.log_path, *self.extra_logs]:
            try:
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
        return "\n".join(parts)

    def wait_port(self, host: str, port: int, timeout: float = 20.0) -> None:
        wait_until(lambda: port_open(host, port), timeout, f"{self.name} on {host}:{port}",
                   self.proc, self.output)

    def wait_output(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, self.output(), re.MULTILINE)
            if match:
                found.append(match)
            return match is not None

        wait_until(seen, timeout, f"{self.name} to print {pattern!r}", self.proc, self.output)
        return found[0]

    def stop(self) -> None:
        stop_pid(self.proc)


class LineReader:
    """
    Reads a process's output line by line in a thread and keeps every line.

    Tests take a :meth:`mark` before acting and then :meth:`wait_for` a line after it.
    Each line is also appended to ``copy_to``, for reading after a failure.
    """

    def __init__(self, proc: subprocess.Popen[bytes], copy_to: Path) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._copy_to = copy_to
        self._thread = threading.Thread(target=self._read, name="line-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self._copy_to.open("a", encoding="utf-8") as copy:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                copy.write(line + "\n")
                copy.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def text(self, since: int = 0) -> str:
        with self._cond:
            return "\n".join(self.lines[since:])

    def wait_for(
        self, predicate: Callable[[str], bool], since: int = 0, timeout: float = 10.0,
        what: str = "a line",
    ) -> str:
        """The first line after ``since`` that fits ``predicate``, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        index = since
        with self._cond:
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    index += 1
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    why = "the process ended" if self.closed else f"timed out after {timeout:g}s"
                    shown = "\n".join(self.lines[since:])[-6000:]
                    raise PeerError(f"waiting for {what}: {why}\n--- output ---\n{shown}")
                self._cond.wait(left)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)
