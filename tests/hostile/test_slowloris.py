"""
Slowloris: 5,000 connections that stall or trickle one byte a second (an HTTP head, a
TLS ClientHello, an XMPP header that never end) are all closed within the detect
deadline + 1 s (a total deadline, not an idle timer), while a legitimate client's
requests keep a p99 latency of at most 250 ms with none failing, and gatekeep's memory
stays bounded. And on the HTTP proxy: 300 clients that send a good request, then
trickle the next request's head, are closed at ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.hostile.harness import (
    raise_nofile,
    rss_kib,
    start_backend,
    start_echo,
    start_gatekeep,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ATTACKERS = 5000
DEADLINE = 3.0

CONFIG = """
[[listener]]
name = "pub"
endpoint = "tcp:0:interface=127.0.0.1:backlog=4096"
service = "svc"
detect_timeout = "{deadline}s"

[service.svc]
[[service.svc.route]]
name = "http"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{port}" }}
[[service.svc.route]]
name = "tls"
match.tls = {{}}
forward = {{ to = "tcp:127.0.0.1:{port}" }}
[[service.svc.route]]
name = "xmpp"
match.xmpp = {{}}
forward = {{ to = "tcp:127.0.0.1:{port}" }}
"""


class LegitClient(threading.Thread):
    """Requests through gatekeep, one after the other, recording each latency."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def one(self) -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: legit.example\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        if not reply.endswith(b"\r\n\r\nok"):
            raise ValueError(f"reply {reply[:80]!r}")
        self.latencies.append(time.monotonic() - started)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.one()
            except (OSError, ValueError) as error:
                self.failures.append(repr(error))
            self.stop.wait(0.02)


def test_slowloris(tmp_path: Path) -> None:
    raise_nofile(ATTACKERS + 1024)
    backend = start_backend(tmp_path / "backend")
    gatekeep = start_gatekeep(tmp_path / "gk", CONFIG.format(deadline=DEADLINE, port=backend.port),
                              ["pub"], nofile=4 * ATTACKERS)
    try:
        port = gatekeep.port("pub")
        legit = LegitClient(port)
        legit.one()
        rss_before = rss_kib(gatekeep.pid)
        legit.start()
        # The attackers run at a lower priority: on the internet they would not be
        # taking this machine's CPU from gatekeep and the legitimate client.
        attack = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "tests.hostile.load", "slowloris",
             str(port),
             str(ATTACKERS), str(DEADLINE), "--nofile", str(ATTACKERS + 1024)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        peak = rss_before
        while attack.poll() is None:
            peak = max(peak, rss_kib(gatekeep.pid))
            time.sleep(0.1)  # sampling RSS while the attack runs
        out, _ = attack.communicate()
        legit.stop.set()
        legit.join(10)
        report = json.loads(out.strip().splitlines()[-1])
        rss_after = rss_kib(gatekeep.pid)
        latencies = sorted(legit.latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(f"slowloris: {report['closed']}/{ATTACKERS} closed, slowest after "
              f"{report['max_close']:.2f}s (deadline {DEADLINE}s), late {report['late']}, "
              f"open {report['not_closed']}, connect failures {report['connect_failed']}; "
              f"legit client: {len(latencies)} requests, p50 "
              f"{latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms, {len(legit.failures)} failed; gatekeep RSS "
              f"{rss_before // 1024} MiB before, peak {peak // 1024} MiB, "
              f"{rss_after // 1024} MiB after")
        assert report["connect_failed"] == 0
        assert report["not_closed"] == 0
        assert report["closed"] == ATTACKERS
        assert report["late"] == 0, report
        assert not legit.failures, legit.failures[:10]
        assert p99 <= 0.250
        assert peak - rss_before < 200 * 1024  # KiB: about 40 KiB per attacker at most
    finally:
        gatekeep.stop()
        backend.stop()
    assert not gatekeep.problems(), gatekeep.problems()[:10]


# ------------------------------------------------------------------ keep-alive slowloris

SITE = """
[[listener]]
name = "web"
endpoint = "tcp:0:interface=127.0.0.1:backlog=1024"
service = "web"
[service.web]
[[service.web.route]]
name = "site"
http = "site"

[http.site]
keepalive_timeout = "{timeout}s"
[[http.site.route]]
name = "all"
to = "tcp:127.0.0.1:{port}"
"""
KEEPALIVE = 2.0
KEEPALIVE_CLIENTS = 300


async def _kept_alive(port: int) -> float | None:
    """One good request, then a next head trickled; seconds from the answer to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /first HTTP/1.1\r\nHost: a.example\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        answered = asyncio.get_running_loop().time()
        for byte in b"GET /second HTTP/1.1\r\nHost: a.example\r\nX: " + b"y" * 100:
            writer.write(bytes([byte]))
            try:
                if not await asyncio.wait_for(reader.read(4096), 0.3):
                    return asyncio.get_running_loop().time() - answered
            except TimeoutError:
                continue
        return None
    except ConnectionError:
        return asyncio.get_running_loop().time() - answered
    finally:
        writer.close()


async def _kept_alive_all(port: int) -> list[float | None]:
    return list(await asyncio.gather(*(_kept_alive(port) for _ in range(KEEPALIVE_CLIENTS))))


def test_slowloris_on_a_kept_alive_http_connection(tmp_path: Path) -> None:
    """The next request's head trickled after a good one: closed at keepalive_timeout."""
    echo = start_echo(tmp_path / "echo")
    gatekeep = start_gatekeep(tmp_path / "gk", SITE.format(timeout=KEEPALIVE, port=echo.port),
                              ["web"])
    try:
        closed = asyncio.run(_kept_alive_all(gatekeep.port("web")))
        times = [t for t in closed if t is not None]
        print(f"keep-alive slowloris: {len(times)}/{KEEPALIVE_CLIENTS} closed, slowest "
              f"{max(times, default=0):.2f}s after its answer (keepalive_timeout {KEEPALIVE}s)")
        assert len(times) == KEEPALIVE_CLIENTS
        assert max(times) <= KEEPALIVE + 1.0
    finally:
        gatekeep.stop()
        echo.peer.stop()
    assert not gatekeep.problems(), gatekeep.problems()[:10]
