"""
Resource exhaustion: gatekeep under ``ulimit -n 256`` and a connection flood.

The flood holds far more connections than gatekeep has descriptors for. While it
lasts gatekeep must not spin (accepts are paused and retried with a backoff, not
retried in a busy loop), must log at most about one line per second about it, and
once the flood ends a legitimate client must be served again within 3 s.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tests.hostile.harness import cpu_seconds, raise_nofile, start_backend, start_gatekeep
from tests.integration.peers import Gatekeep

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "pub"
endpoint = "tcp:0:interface=127.0.0.1:backlog=64"
service = "svc"
detect_timeout = "2s"

[service.svc]
[[service.svc.route]]
name = "web"
match.http = {}
respond = { data = "HTTP/1.0 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok" }
"""

#: A second case: every connection is forwarded at once (two descriptors each), to a
#: backend that holds it, so connects to the backend run out of descriptors too.
FORWARDING = CONFIG + """
[[listener]]
name = "fwd"
endpoint = "tcp:0:interface=127.0.0.2:backlog=64"
service = "fwd"

[service.fwd]
[[service.fwd.route]]
name = "all"
forward = { to = "tcp:127.0.0.1:BACKEND_PORT" }
"""

FLOOD = 2000
FLOOD_SECONDS = 4.0
#: Log lines that are about running out of descriptors (Twisted's or ours).
EXHAUSTION = re.compile(r"EMFILE|file descriptors|Could not accept|Too many open files")


def served(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            return reply.endswith(b"\r\n\r\nok")
    except OSError:
        return False


def flood(port: int, count: int = FLOOD, host: str = "127.0.0.1") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((host, port))  # EINPROGRESS: the handshake goes on
        socks.append(sock)
    return socks


def run_flood(gatekeep: Gatekeep, port: int, host: str) -> tuple[float, float, float, list[str]]:
    """Flood ``host:port`` for FLOOD_SECONDS; (CPU s, wall s, resume s, exhaustion lines)."""
    assert served(gatekeep.port("pub"))
    mark = gatekeep.mark()
    cpu_before = cpu_seconds(gatekeep.pid)
    started = time.monotonic()
    socks = flood(port, host=host)
    # Keep the flood up: new connections keep arriving as old ones end.
    while time.monotonic() - started < FLOOD_SECONDS:
        for sock in socks[:100]:
            sock.close()
        socks = socks[100:] + flood(port, 100, host)
        time.sleep(0.25)  # pacing the flood, not waiting for gatekeep
    flood_cpu = cpu_seconds(gatekeep.pid) - cpu_before
    flood_wall = time.monotonic() - started
    for sock in socks:
        sock.close()
    ended = time.monotonic()
    while not served(gatekeep.port("pub")):
        assert time.monotonic() - ended < 3.0, "not served again within 3 s"
    resumed = time.monotonic() - ended
    lines = [line for line in gatekeep.log.text(mark).splitlines() if EXHAUSTION.search(line)]
    return flood_cpu, flood_wall, resumed, lines


def test_connection_flood_under_ulimit_256(tmp_path: Path) -> None:
    raise_nofile(FLOOD + 512)
    gatekeep = start_gatekeep(tmp_path, CONFIG, ["pub"], nofile=256)
    try:
        flood_cpu, flood_wall, resumed, lines = run_flood(
            gatekeep, gatekeep.port("pub"), "127.0.0.1")
        print(f"fd flood: {FLOOD} connections for {flood_wall:.1f}s under ulimit -n 256: "
              f"gatekeep CPU {flood_cpu:.2f}s, {len(lines)} exhaustion log lines, "
              f"served again {resumed:.2f}s after the flood")
        assert lines, "the flood never exhausted the descriptors"
        assert len(lines) <= flood_wall + 3, lines[:20]
        assert flood_cpu < 0.5 * flood_wall
    finally:
        gatekeep.stop()
    assert not gatekeep.problems(), gatekeep.problems()[:10]


def test_forwarding_flood_under_ulimit_256(tmp_path: Path) -> None:
    raise_nofile(FLOOD + 512)
    backend = start_backend(tmp_path / "backend")
    config = FORWARDING.replace("BACKEND_PORT", str(backend.port))
    gatekeep = start_gatekeep(tmp_path / "gk", config, ["pub", "fwd"], nofile=256)
    try:
        flood_cpu, flood_wall, resumed, lines = run_flood(
            gatekeep, gatekeep.port("fwd"), "127.0.0.2")
        connection_lines = [line for line in lines if " fwd " in line]
        print(f"forwarding fd flood: {FLOOD} connections for {flood_wall:.1f}s under ulimit -n "
              f"256: gatekeep CPU {flood_cpu:.2f}s, {len(lines) - len(connection_lines)} "
              f"exhaustion lines besides {len(connection_lines)} connection lines naming it, "
              f"served again {resumed:.2f}s after the flood")
        assert len(lines) - len(connection_lines) <= flood_wall + 3, lines[:20]
        assert flood_cpu < 0.5 * flood_wall
    finally:
        gatekeep.stop()
        backend.stop()
    assert not gatekeep.problems(), gatekeep.problems()[:10]
