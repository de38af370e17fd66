"""
Processes for the hostile suite: gatekeep under a file-descriptor limit, the scripted
backend, and what the tests measure about a process (RSS, CPU time, descriptors).

Everything is started on free ports and stopped by PID; waits poll against deadlines.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from tests.integration.peers import Gatekeep, HTTPEcho, start_http_echo, twistd
from tests.integration.process import Peer, wait_until

__all__ = [
    "Backend",
    "cpu_seconds",
    "exchange",
    "open_fds",
    "raise_nofile",
    "rss_kib",
    "start_backend",
    "start_echo",
    "start_gatekeep",
    "stop_leftovers",
]

ROOT = Path(__file__).resolve().parents[2]
_TICKS = os.sysconf("SC_CLK_TCK")
#: Backends started here; stop_leftovers() stops any a failed set-up left running.
_STARTED: list[Peer] = []


def stop_leftovers() -> None:
    """Stop (by PID) every backend this module started that is still running."""
    while _STARTED:
        _STARTED.pop().stop()


def start_echo(root: Path) -> HTTPEcho:
    """tests/integration/http_echo.py, stopped by stop_leftovers() if nothing else does."""
    echo = start_http_echo(root)
    _STARTED.append(echo.peer)
    return echo


def raise_nofile(limit: int) -> int:
    """Raise this process's RLIMIT_NOFILE to ``limit`` (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= limit:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(hard, limit)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` in KiB (VmRSS)."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    assert found is not None
    return int(found[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def exchange(port: int, data: bytes, timeout: float = 10.0,
             host: str = "127.0.0.1") -> tuple[bytes, float]:
    """
    Send ``data``, read until the peer closes; what was read, and the seconds from the
    end of sending to the close. A peer that closes (or resets) before everything was
    sent still has its answer read.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        sent = time.monotonic()
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                got += chunk
        return got, time.monotonic() - sent


def start_gatekeep(
    workdir: Path, config: str, listeners: Sequence[str], nofile: int | None = None,
) -> Gatekeep:
    """``twistd -n gatekeep`` with ``config``, under ``ulimit -n NOFILE`` if given."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gatekeep.toml"
    path.write_text(config)
    argv: list[str | Path] = [twistd(), "-n", "--pidfile=", "gatekeep", "--config", path]
    if nofile is not None:
        # The shell's own ulimit, then exec: the PID stays gatekeep's.
        argv = ["sh", "-c", f'ulimit -n {nofile} && exec "$0" "$@"', *argv]
    return Gatekeep(argv, workdir, listeners)


@attrs.define
class Backend:
    """The scripted backend (:mod:`tests.hostile.backend`) and its result lines."""

    peer: Peer
    port: int

    def results(self) -> list[str]:
        return [line for line in self.peer.output().splitlines()
                if line.startswith(("OK ", "BAD ", "ERROR "))]

    def wait_results(self, count: int, timeout: float) -> list[str]:
        wait_until(lambda: len(self.results()) >= count, timeout,
                   f"{count} backend results", self.peer.proc, self.peer.output)
        return self.results()

    def stop(self) -> None:
        self.peer.stop()


def start_backend(
    workdir: Path, nofile: int | None = None, unix: Path | None = None, proxy: bool = False,
    echo: bool = False,
) -> Backend:
    """The scripted backend on a free TCP port, or on the UNIX socket ``unix``."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "tests.hostile.backend"]
    if nofile is not None:
        argv += ["--nofile", str(nofile)]
    if unix is not None:
        argv += ["--unix", str(unix)]
    if proxy:
        argv.append("--proxy")
    if echo:
        argv.append("--echo")
    peer = Peer("backend", argv, workdir / "backend.log", cwd=ROOT)
    _STARTED.append(peer)
    try:
        found = peer.wait_output(r"^PORT (\d+)$")
    except Exception:
        peer.stop()
        raise
    return Backend(peer, int(found[1]))
