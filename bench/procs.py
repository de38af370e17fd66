"""
Running the processes a benchmark needs: loopback ports, start-up waits, stopping by pid.

Nothing here kills by name: each :class:`Instance` stops the process the harness
started and that process's own descendants, by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cpu import process_tree

__all__ = [
    "Instance",
    "StartError",
    "free_port",
    "fresh_path",
    "log_tail",
    "reserve_refusing_port",
    "run_version",
    "wait_listening",
]


class StartError(Exception):
    """A subject or backend did not come up; the message says why (with its log tail)."""


def free_port() -> int:
    """A loopback port nobody listens on right now (outside the lab's 15000-15999)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not 15000 <= port <= 15999:
            return port


def reserve_refusing_port() -> socket.socket:
    """A bound, never-listening socket: connecting to its port is refused, and it stays ours."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _listening_ports() -> set[int]:
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(port: int, process: subprocess.Popen[bytes] | None, timeout: float,
                   log: Path | None = None) -> None:
    """Wait until something listens on ``port`` (read from /proc: no probe connection)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port in _listening_ports():
            return
        if process is not None and process.poll() is not None:
            raise StartError(f"exited with code {process.returncode}{log_tail(log)}")
        time.sleep(0.02)
    raise StartError(f"not listening on port {port} after {timeout:.0f}s{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "; log " + log.name + ":\n      " + "\n      ".join(text) if text else ""


def fresh_path(workdir: Path, stem: str, suffix: str) -> Path:
    """``stem-N.suffix`` with the first N not used yet in ``workdir``."""
    n = 1
    while (workdir / f"{stem}-{n}{suffix}").exists():
        n += 1
    return workdir / f"{stem}-{n}{suffix}"


def run_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError as error:
        return f"unavailable ({error.strerror})"
    out = (done.stdout + done.stderr).strip().splitlines()
    return out[0].strip() if out else "?"


@dataclass
class Instance:
    """One running subject (or the direct path, which has no process)."""

    subject: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra_logs: list[Path] = field(default_factory=list)

    @property
    def root_pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def stop(self) -> int | None:
        """Stop the process and its descendants (by pid); its exit code, if it had exited."""
        process = self.process
        if process is None:
            return None
        code = process.poll()
        if code is not None:
            return code
        pids = process_tree(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return None
