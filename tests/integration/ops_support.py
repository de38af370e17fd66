"""Support for the operations tests: an echo backend, a load generator, HTTP GETs."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import urllib.request

import attrs

__all__ = ["EchoServer", "Load", "http_get"]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(data)


class EchoServer:
    """A threaded TCP echo backend on 127.0.0.1 (a thread of the test process)."""

    def __init__(self) -> None:
        socketserver.ThreadingTCPServer.daemon_threads = True
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exchange(sock: socket.socket, message: bytes) -> None:
    """Send ``message``; fail unless exactly it comes back."""
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(got)} of {len(message)} bytes")
        got += chunk
    if got != message:
        raise ValueError(f"echo mismatch: {got[:60]!r}")


@attrs.define
class Load:
    """
    Client threads that each open a connection, exchange a line, half-close and read
    the close, as fast as they can, until stopped or ``max_seconds`` have passed.
    """

    port: int
    threads: int = 3
    max_seconds: float = 300.0
    ok: int = 0
    failures: list[str] = attrs.field(factory=list)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _workers: list[threading.Thread] = attrs.field(factory=list)

    def start(self) -> None:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def _one(self, index: int, count: int) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            exchange(sock, b"GATEKEEP-ECHO %d %d\n" % (index, count))
            sock.shutdown(socket.SHUT_WR)
            if sock.recv(1) != b"":
                raise ValueError("data after the echo")

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        count = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            count += 1
            try:
                self._one(index, count)
            except (OSError, ValueError) as error:
                with self._lock:
                    self.failures.append(f"client {index} #{count}: {error!r}")
            else:
                with self._lock:
                    self.ok += 1

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return (response.status, response.headers.get("content-type", ""),
                response.read().decode("utf-8"))
