"""
The benchmark's own backend and load generators (stdlib only, plain blocking sockets).

Everything here moves data with large buffers (``recv_into`` a 1 MiB buffer,
``sendall`` of 1 MiB slices), so the per-call Python cost is small next to the
kernel's copying; parallel streams run in separate processes and the backend
forks one process per connection. ``run.py`` checks that the direct figures are
well above every proxy's, which is what shows these tools are not the bottleneck.

The backend speaks a one-line protocol; the line also gives each proxy
something to detect (it is not TLS, so every proxy takes its catch-all route):

- ``UP <n>\\n`` then ``n`` bytes: the backend reads exactly ``n`` bytes and answers
  ``OK <n> <crc>\\n`` (``crc`` is ``-`` unless the line ends with `` crc``);
- ``DOWN <n>\\n``: the backend sends ``n`` bytes and closes;
- ``ECHO\\n``: the backend echoes every byte until the client closes.

Run as a script, ``loadgen.py backend`` starts the backend and prints
``port <N>`` once listening.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import random
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "CHUNK",
    "BulkResult",
    "BulkStream",
    "PingResult",
    "bulk",
    "pattern",
    "pattern_crc",
    "ping_pong",
    "serve_backend",
]

CHUNK = 1 << 20
#: Seconds without progress after which a client gives up (a hang is reported, not waited out).
IDLE_TIMEOUT = 30.0


class LoadError(Exception):
    """The transfer did not complete as it must (wrong byte count, early close, timeout)."""


@functools.cache
def pattern() -> bytes:
    """The 1 MiB block that every bulk transfer repeats (not compressible, not TLS-like)."""
    return random.Random(0x6B).randbytes(CHUNK).replace(b"\x16", b"\x17")


def pattern_crc(size: int, block: bytes) -> int:
    """CRC-32 of ``size`` bytes of ``block`` repeated (what a verified transfer must carry)."""
    crc = 0
    view = memoryview(block)
    while size > 0:
        step = min(size, len(block))
        crc = zlib.crc32(view[:step], crc)
        size -= step
    return crc


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _recv_line(sock: socket.socket, limit: int = 256) -> tuple[bytes, bytes]:
    """Read up to and including ``\\n``; returns (line without it, bytes read past it)."""
    data = b""
    while b"\n" not in data:
        more = sock.recv(4096)
        if not more:
            raise LoadError(f"connection closed after {len(data)} bytes, before a full line")
        data += more
        if len(data) > limit and b"\n" not in data[:limit]:
            raise LoadError("line too long")
    line, _, rest = data.partition(b"\n")
    return line, rest


# --- backend ---------------------------------------------------------------------------


def _backend_up(sock: socket.socket, size: int, rest: bytes, want_crc: bool) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = len(rest)
    crc = zlib.crc32(rest) if want_crc else 0
    while got < size:
        n = sock.recv_into(view, min(CHUNK, size - got))
        if n == 0:
            sock.sendall(f"SHORT {got}\n".encode())
            return
        if want_crc:
            crc = zlib.crc32(view[:n], crc)
        got += n
    if got != size:
        sock.sendall(f"LONG {got}\n".encode())
        return
    sock.sendall(f"OK {got} {crc if want_crc else '-'}\n".encode())


def _backend_down(sock: socket.socket, size: int, block: bytes) -> None:
    view = memoryview(block)
    while size > 0:
        step = min(size, len(block))
        sock.sendall(view[:step])
        size -= step


def _backend_echo(sock: socket.socket, rest: bytes) -> None:
    if rest:
        sock.sendall(rest)
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


def _handle(sock: socket.socket, block: bytes) -> None:
    sock.settimeout(IDLE_TIMEOUT * 2)
    _nodelay(sock)
    line, rest = _recv_line(sock)
    words = line.decode("ascii", "replace").split()
    if words[:1] == ["UP"] and len(words) in (2, 3):
        _backend_up(sock, int(words[1]), rest, words[2:] == ["crc"])
    elif words[:1] == ["DOWN"] and len(words) == 2:
        _backend_down(sock, int(words[1]), block)
    elif words == ["ECHO"]:
        _backend_echo(sock, rest)
    else:
        sock.sendall(b"ERR unknown request\n")


def serve_backend(listener: socket.socket, on_ready: Callable[[int], None]) -> None:
    """Accept for ever, forking one process per connection (children reaped by the kernel)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    block = pattern()
    on_ready(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            code = 0
            try:
                _handle(conn, block)
            except (OSError, LoadError, ValueError) as error:
                print(f"backend: connection failed: {error}", file=sys.stderr, flush=True)
                code = 1
            finally:
                conn.close()
            os._exit(code)
        conn.close()


# --- bulk clients ----------------------------------------------------------------------


@dataclass(frozen=True)
class BulkStream:
    """One stream of a bulk test; ``sent``/``received`` count every byte on the socket."""

    started: float
    ended: float
    size: int
    sent: int
    received: int


@dataclass(frozen=True)
class BulkResult:
    direction: str
    streams: int
    size: int
    elapsed: float
    #: (bytes sent, bytes received) per connection, as the client counted them.
    wire: tuple[tuple[int, int], ...] = ()

    @property
    def gbps(self) -> float:
        return self.size / self.elapsed / 1e9


def _bulk_up(sock: socket.socket, size: int, block: bytes, verify: bool) -> tuple[int, int]:
    header = f"UP {size}{' crc' if verify else ''}\n".encode()
    sock.sendall(header)
    view = memoryview(block)
    left = size
    while left > 0:
        step = min(left, len(block))
        sock.sendall(view[:step])
        left -= step
    line, rest = _recv_line(sock)
    words = line.decode("ascii", "replace").split()
    if words[:2] != ["OK", str(size)]:
        raise LoadError(f"backend answered {line!r} after {size} bytes were sent")
    if verify and words[2:] != [str(pattern_crc(size, block))]:
        raise LoadError(f"backend received different bytes (CRC {words[2:]}) than were sent")
    return len(header) + size, len(line) + 1 + len(rest)


def _bulk_down(sock: socket.socket, size: int, block: bytes, verify: bool) -> tuple[int, int]:
    header = f"DOWN {size}\n".encode()
    sock.sendall(header)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    crc = 0
    while True:
        n = sock.recv_into(view, CHUNK)
        if n == 0:
            break
        if verify:
            crc = zlib.crc32(view[:n], crc)
        got += n
    if got != size:
        raise LoadError(f"received {got} bytes, expected {size}")
    if verify and crc != pattern_crc(size, block):
        raise LoadError("received bytes differ from what the backend sent")
    return len(header), got


def _bulk_worker(
    address: tuple[str, int], direction: str, size: int, verify: bool,
    barrier: Any, pipe: Connection,
) -> None:
    try:
        block = pattern()
        sock = socket.create_connection(address, timeout=IDLE_TIMEOUT)
        barrier.wait(IDLE_TIMEOUT)
        started = time.monotonic()
        move = _bulk_up if direction == "up" else _bulk_down
        sent, received = move(sock, size, block, verify)
        ended = time.monotonic()
        sock.close()
        pipe.send(BulkStream(started, ended, size, sent, received))
    except LoadError as error:
        pipe.send(str(error))
    except (OSError, ValueError, threading.BrokenBarrierError) as error:
        pipe.send(f"{type(error).__name__}: {error}")
    finally:
        pipe.close()


def bulk(
    address: tuple[str, int], direction: str, size: int, streams: int, verify: bool = False,
) -> BulkResult:
    """Move ``size`` bytes in total over ``streams`` parallel connections (one process each)."""
    if direction not in ("up", "down"):
        raise ValueError(direction)
    ctx = multiprocessing.get_context("fork")
    pattern()  # made once, inherited by the workers
    barrier = ctx.Barrier(streams)
    per_stream = [size // streams + (1 if i < size % streams else 0) for i in range(streams)]
    workers = []
    for part in per_stream:
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=_bulk_worker, args=(address, direction, part, verify, barrier, sender),
            daemon=True)
        process.start()
        sender.close()
        workers.append((process, receiver))
    results: list[BulkStream] = []
    problems: list[str] = []
    for process, receiver in workers:
        try:
            message = receiver.recv()
        except EOFError:
            message = f"load process exited with code {process.exitcode}"
        process.join()
        if isinstance(message, BulkStream):
            results.append(message)
        else:
            problems.append(str(message))
    if problems:
        raise LoadError("; ".join(sorted(set(problems))))
    started = min(r.started for r in results)
    ended = max(r.ended for r in results)
    return BulkResult(direction, streams, sum(r.size for r in results), ended - started,
                      tuple((r.sent, r.received) for r in results))


# --- ping-pong -------------------------------------------------------------------------


@dataclass(frozen=True)
class PingResult:
    size: int
    rtts_ns: list[int]
    #: (bytes sent, bytes received) on the connection.
    wire: tuple[int, int] = (0, 0)

    def percentile(self, fraction: float) -> float:
        """Round-trip time in microseconds at ``fraction`` (nearest rank)."""
        ordered = sorted(self.rtts_ns)
        rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
        return ordered[rank] / 1000.0


def ping_pong(
    address: tuple[str, int], count: int, size: int = 64, warmup: int = 200,
) -> PingResult:
    """One connection, ``count`` timed round trips of ``size`` bytes (after ``warmup`` untimed)."""
    sock = socket.create_connection(address, timeout=IDLE_TIMEOUT)
    _nodelay(sock)
    ping = bytes((i * 7 + 1) & 0x7F for i in range(size))
    buf = bytearray(max(size, 65536))
    view = memoryview(buf)
    rtts: list[int] = []
    try:
        sock.sendall(b"ECHO\n")
        clock = time.perf_counter_ns
        for i in range(count + warmup):
            t0 = clock()
            sock.sendall(ping)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:], len(buf) - got)
                if n == 0:
                    raise LoadError(f"connection closed after {i} round trips")
                got += n
            t1 = clock()
            if got != size or buf[:size] != ping:
                raise LoadError(f"round trip {i}: got {got} bytes back, not the {size} sent")
            if i >= warmup:
                rtts.append(t1 - t0)
    finally:
        sock.close()
    trips = count + warmup
    return PingResult(size, rtts, (5 + trips * size, trips * size))


# --- script entry ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    backend = sub.add_parser("backend", help="run the UP/DOWN/ECHO backend")
    backend.add_argument("--host", default="127.0.0.1")
    backend.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(1024)

    def ready(port: int) -> None:
        print(f"port {port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        serve_backend(listener, ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
