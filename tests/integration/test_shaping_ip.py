"""
A shaper with ``scope = "ip"`` against a real ``twistd gatekeep``: two downloads
from one client address share one budget.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from tests.integration.conftest import GatekeepRunner

pytestmark = pytest.mark.slow


SHARED = """
[[listener]]
name = "shared"
endpoint = "tcp:0:interface=127.0.0.1"
service = "down"
shaper = "per-client"

[service.down]
[[service.down.route]]
name = "down"
forward = {{ to = "tcp:127.0.0.1:{source}" }}

[shaper.per-client]
rate = "2MiB/s"
burst = "128KiB"
scope = "ip"
"""

MiB = 1024 * 1024


def test_ip_scope_shares_the_rate(gatekeep_runner: GatekeepRunner) -> None:
    """Two downloads of 10 MiB from one client address share 2 MiB/s: ~10 s for both."""
    size = 10 * MiB

    class Source(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            block = b"\0" * 65536
            for _ in range(size // len(block)):
                self.request.sendall(block)
            self.request.shutdown(socket.SHUT_WR)
            while self.request.recv(65536):
                pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Source)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        gatekeep = gatekeep_runner(SHARED.format(source=server.server_address[1]), ["shared"])
        port = gatekeep.port("shared")
        took: list[float] = []

        def download() -> None:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                started = time.monotonic()
                sock.shutdown(socket.SHUT_WR)
                received = 0
                while chunk := sock.recv(65536):
                    received += len(chunk)
                took.append(time.monotonic() - started)
                assert received == size

        clients = [threading.Thread(target=download) for _ in range(2)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(60)
    finally:
        server.shutdown()
        server.server_close()
    expected = (2 * size - 128 * 1024) / (2 * MiB)
    print(f"\ntwo 10 MiB downloads sharing 2 MiB/s: {took} s, expected {expected:.3f} s")
    assert len(took) == 2
    assert abs(max(took) - expected) < expected * 0.05
    assert min(took) > expected * 0.8  # shared fairly enough: neither ran at full rate
