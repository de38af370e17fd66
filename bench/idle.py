"""
Memory per idle proxied connection: open many connections through a subject, each
sending one short line (so that every proxy has detected, routed and connected its
backend), leave them idle, and read the subject's resident memory.

    idle.py backend         accept and hold connections (never read); prints
                            "port N", then "held N" whenever asked on stdin

The figure is (RSS of the subject's process tree with the connections open - RSS
before they were opened) / connections, in KiB. Kernel memory (socket buffers) is
not in RSS and not counted, for any subject.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cpu import process_tree
from loadgen import LoadError

__all__ = [
    "IdleBackend",
    "IdleResult",
    "default_idle",
    "hold_idle",
    "nofile_limit",
    "raise_nofile",
    "tree_rss_kib",
]

LINE = b"idle connection\n"


def raise_nofile(limit: int = 65536) -> int:
    """Raise this process's open-file limit (the hard one too when root); the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in ((limit, max(limit, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, wanted)
            return wanted[0]
        except (ValueError, OSError):
            continue
    return soft


def nofile_limit() -> int:
    """The open-file limit subjects get (:func:`raise_nofile` in this process first)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def default_idle() -> int:
    """10,000 idle connections, or what 2 descriptors per connection allow here."""
    return max(100, min(10000, (raise_nofile() - 400) // 2))


def tree_rss_kib(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


@dataclass(frozen=True)
class IdleResult:
    connections: int
    before_kib: int
    after_kib: int

    @property
    def per_connection_kib(self) -> float:
        return (self.after_kib - self.before_kib) / self.connections


class IdleBackend:
    """``idle.py backend`` as a child process: holds what reaches it."""

    def __init__(self, log: Path) -> None:
        with log.open("ab") as errors:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "backend"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("port "):
            self.process.kill()
            raise LoadError(f"the idle backend did not start: {line!r}")
        self.port = int(line.split()[1])

    def _ask(self, command: str) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline().decode().split()[1])

    def held(self) -> int:
        return self._ask("count")

    def release(self) -> None:
        self._ask("close")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def hold_idle(address: tuple[str, int], count: int, root: int, backend: IdleBackend,
              settle: float = 1.0, timeout: float = 180.0) -> IdleResult:
    """Open ``count`` connections to ``address``; RSS of ``root``'s tree before and after."""
    before = tree_rss_kib(root)
    clients: list[socket.socket] = []
    pending: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    try:
        while len(clients) + len(pending) < count:
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(address)
            pending.append(sock)
            if len(pending) >= 64 or len(clients) + len(pending) >= count:
                _finish_connects(pending, deadline)
                clients += pending
                pending = []
        while backend.held() < count:
            if time.monotonic() > deadline:
                raise LoadError(f"only {backend.held()} of {count} idle connections "
                                "reached the backend")
            time.sleep(0.2)
        time.sleep(settle)
        after = tree_rss_kib(root)
    finally:
        for sock in clients + pending:
            sock.close()
        backend.release()
    return IdleResult(count, before, after)


def _finish_connects(socks: list[socket.socket], deadline: float) -> None:
    waiting = {sock.fileno(): sock for sock in socks}
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLOUT)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LoadError("idle connections did not connect in time")
        for fd, _ in poller.poll(left * 1000):
            sock = waiting.pop(fd)
            poller.unregister(fd)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise LoadError(f"idle connection failed: {os.strerror(error)}")
            sock.setblocking(True)
            sock.sendall(LINE)


def backend() -> None:
    """Accept and hold; answer "held N" to each line on stdin."""
    raise_nofile()
    server = socket.create_server(("127.0.0.1", 0), backlog=4096)
    server.setblocking(False)
    print(f"port {server.getsockname()[1]}", flush=True)
    held: list[socket.socket] = []
    while True:
        ready, _, _ = select.select([server, sys.stdin], [], [])
        if sys.stdin in ready:
            line = sys.stdin.readline()
            if not line:
                return
            if line.strip() == "close":
                for sock in held:
                    sock.close()
                held = []
            print(f"held {len(held)}", flush=True)
        if server in ready:
            while True:
                try:
                    conn, _ = server.accept()
                except BlockingIOError:
                    break
                held.append(conn)


if __name__ == "__main__":
    backend()
