"""
New connections per second: many short connections, each one tiny HTTP request
(``Connection: close``) and its tiny response, from ``clients`` concurrent clients.

wrk (C, epoll) generates the load when it is installed; otherwise a stdlib
fallback does (non-blocking sockets and a selector, one process per core), which
is slower, so the tool used is part of the result.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import re
import selectors
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from loadgen import LoadError

__all__ = ["RateResult", "connection_rate"]

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class RateResult:
    connections: int
    seconds: float
    tool: str
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.connections / self.seconds


def connection_rate(
    address: tuple[str, int], clients: int, seconds: int, threads: int = 1,
    tool: str = "auto",
) -> RateResult:
    """Run the test with wrk if ``tool`` is ``wrk``, or ``auto`` and wrk is installed."""
    if tool == "wrk" or (tool == "auto" and shutil.which("wrk")):
        return _wrk(address, clients, seconds, threads)
    return _python(address, clients, seconds)


# --- wrk -------------------------------------------------------------------------------

_WRK_DONE = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_STATUS = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk(address: tuple[str, int], clients: int, seconds: int, threads: int) -> RateResult:
    host, port = address
    command = ["wrk", f"-t{min(threads, clients)}", f"-c{clients}", f"-d{seconds}s",
               "--timeout", "5s", "-H", "Connection: close", f"http://{host}:{port}/"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    out = done.stdout + done.stderr
    finished = _WRK_DONE.search(out)
    if done.returncode != 0 or finished is None:
        raise LoadError(f"wrk failed (exit {done.returncode}): {out.strip()[-500:]}")
    errors: dict[str, int] = {}
    socket_errors = _WRK_SOCKET.search(out)
    if socket_errors:
        for name, value in zip(("connect", "read", "write", "timeout"), socket_errors.groups(),
                               strict=True):
            if int(value):
                errors[name] = int(value)
    status = _WRK_STATUS.search(out)
    if status and int(status.group(1)):
        errors["non-2xx"] = int(status.group(1))
    elapsed = float(finished.group(2)) * _UNITS[finished.group(3)]
    return RateResult(int(finished.group(1)), elapsed, f"wrk -t{min(threads, clients)}", errors)


# --- stdlib fallback -------------------------------------------------------------------


@dataclass
class _Client:
    sock: socket.socket
    reply: bytearray = field(default_factory=bytearray)
    sent: bool = False


def _rate_worker(address: tuple[str, int], clients: int, start: float, seconds: float,
                 pipe: Connection) -> None:
    selector = selectors.DefaultSelector()
    done = 0
    errors: dict[str, int] = {}

    def failed(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    def open_one() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            failed("connect")
            return
        selector.register(sock, selectors.EVENT_WRITE, _Client(sock))

    def close(client: _Client) -> None:
        selector.unregister(client.sock)
        client.sock.close()

    time.sleep(max(0.0, start - time.monotonic()))
    deadline = start + seconds
    for _ in range(clients):
        open_one()
    while (now := time.monotonic()) < deadline:
        for key, _events in selector.select(deadline - now):
            client: _Client = key.data
            try:
                if not client.sent:
                    error = client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise ConnectionRefusedError(error, os.strerror(error))
                    client.sock.send(REQUEST)
                    client.sent = True
                    selector.modify(client.sock, selectors.EVENT_READ, client)
                    continue
                data = client.sock.recv(4096)
            except ConnectionRefusedError:
                failed("connect")
                close(client)
                open_one()
                continue
            except OSError:
                failed("read")
                close(client)
                open_one()
                continue
            if data:
                client.reply += data
                continue
            if client.reply.startswith(b"HTTP/1.1 200 "):
                done += 1
            else:
                failed("read" if not client.reply else "non-2xx")
            close(client)
            open_one()
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    pipe.send((done, errors))
    pipe.close()


def _python(address: tuple[str, int], clients: int, seconds: int) -> RateResult:
    processes = max(1, min(clients, os.cpu_count() or 1))
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.2
    workers = []
    for n in range(processes):
        share = clients // processes + (1 if n < clients % processes else 0)
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_rate_worker,
                              args=(address, share, start, float(seconds), sender), daemon=True)
        process.start()
        sender.close()
        workers.append((process, receiver))
    total = 0
    errors: dict[str, int] = {}
    for process, receiver in workers:
        if not receiver.poll(seconds + 30):
            process.kill()
            raise LoadError("a connection-rate process hung")
        done, worker_errors = receiver.recv()
        process.join()
        total += done
        for kind, count in worker_errors.items():
            errors[kind] = errors.get(kind, 0) + count
    return RateResult(total, float(seconds), f"python ({processes} processes, wrk not found)",
                      errors)
