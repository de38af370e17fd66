"""
The admin listener of a running gatekeep: /health, /metrics, and the /status page as
headless Chromium renders it; JSON log lines with the real client address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.clients import chromium_dump_dom, chromium_screenshot, require
from tests.integration.ops_support import EchoServer, exchange, http_get
from tests.integration.peers import Gatekeep, twistd
from tests.integration.process import free_port

pytestmark = pytest.mark.slow

CONFIG = """\
[admin]
endpoint = "tcp:{admin}:interface=127.0.0.1"

[[listener]]
name = "public"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
detect_timeout = "200ms"

[[listener]]
name = "internal"
endpoint = "tcp:{internal}:interface=127.0.0.1"
service = "edge"
detect_timeout = "200ms"

[service.edge]
default = "echo"

[[service.edge.route]]
name = "web-down"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{dead}" }}

[[service.edge.route]]
name = "echo"
forward = {{ to = "tcp:127.0.0.1:{echo}" }}
"""


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gatekeep, int]]:
    echo = EchoServer()
    workdir = tmp_path_factory.mktemp("admin")
    admin = free_port()
    path = workdir / "gatekeep.toml"
    path.write_text(CONFIG.format(admin=admin, echo=echo.port, dead=free_port(),
                                  internal=free_port()))
    gatekeep = Gatekeep([twistd(), "-n", "--pidfile=", "gatekeep", "--config", path,
                         "--log-format", "json"], workdir, [])
    try:
        # The JSON startup line names the listener and its address.
        found: dict[str, str] = {}
        for name in ("public", "internal"):
            def listening(text: str, name: str = name) -> bool:
                event = json.loads(text)
                return bool(event.get("listener") == name and "address" in event)

            line = gatekeep.log.wait_for(listening, what=f"listener {name} listening")
            found[name] = json.loads(line)["address"]
        gatekeep.addresses.update(found)
        yield gatekeep, admin
    finally:
        gatekeep.stop()
        echo.stop()


def json_lines(gatekeep: Gatekeep, since: int = 0) -> list[dict[str, object]]:
    return [json.loads(line) for line in gatekeep.log.text(since).splitlines()]


def test_every_log_line_is_json_and_connections_carry_the_client(
    running: tuple[Gatekeep, int],
) -> None:
    gatekeep, _ = running
    mark = gatekeep.mark()
    with socket.create_connection(("127.0.0.1", gatekeep.port("public")), timeout=10) as sock:
        exchange(sock, b"hello through gatekeep\n")
        host, port = sock.getsockname()
        local = f"{host}:{port}"
    line = gatekeep.log.wait_for(lambda t: json.loads(t).get("client") == local, mark,
                                 what="the connection's JSON line")
    record = json.loads(line)
    assert record["listener"] == "public"
    assert record["route"] == "echo"
    assert (record["bytes_in"], record["bytes_out"]) == (23, 23)
    assert record["close_reason"] == "done"
    assert record["namespace"] == "gatekeep.connection"
    assert all(isinstance(r, dict) for r in json_lines(gatekeep))


def test_health_and_metrics(running: tuple[Gatekeep, int]) -> None:
    gatekeep, admin = running
    assert http_get(f"http://127.0.0.1:{admin}/health")[::2] == (200, "ok\n")
    # One connection whose backend is down: a backend failure and a 502.
    with socket.create_connection(("127.0.0.1", gatekeep.port("internal")), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 502 ")
    status, content_type, body = http_get(f"http://127.0.0.1:{admin}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert re.search(r'^gatekeep_backend_connect_failures_total\{listener="internal",'
                     r'reason="refused",route="web-down"\} 1\.0$', body, re.M), body
    assert re.search(r'^gatekeep_connections_total\{listener="internal",'
                     r'outcome="backend_error",protocol="http",route="web-down"\} 1\.0$',
                     body, re.M), body
    assert re.search(r'^gatekeep_detect_seconds_count\{listener="internal"\} [1-9]', body, re.M)


def test_status_page_in_chromium(running: tuple[Gatekeep, int], tmp_path: Path) -> None:
    require("chromium")
    gatekeep, admin = running
    # Something to show: a finished connection, two open ones, one backend failure.
    with socket.create_connection(("127.0.0.1", gatekeep.port("public")), timeout=10) as sock:
        exchange(sock, b"x\n")
    held = [socket.create_connection(("127.0.0.1", gatekeep.port("public")), timeout=10)
            for _ in range(2)]
    try:
        for sock in held:
            exchange(sock, b"open\n")
        with socket.create_connection(("127.0.0.1", gatekeep.port("internal")), 10) as sock:
            sock.sendall(b"GET /down HTTP/1.1\r\nHost: example.test\r\n\r\n")
            sock.recv(100)
        # Chromium's resolver rules apply to IP literals too: browse to a mapped name.
        url = f"http://gatekeep-admin.test:{admin}/status"
        dom = chromium_dump_dom(url, "MAP gatekeep-admin.test 127.0.0.1", tmp_path / "chromium")
        assert dom.returncode == 0, dom.stderr
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
        assert "gatekeep status" in text
        assert re.search(r"public tcp:0:interface=127\.0\.0\.1 127\.0\.0\.1:\d+ edge 2 \d+",
                         text), text
        # Route echo: 2 open (held above), some finished.
        assert re.search(r"2 echo \(catch-all\) forward to tcp:127\.0\.0\.1:\d+ 2 [1-9]\d*",
                         text), text
        assert "backend unreachable" in text  # the failed connection, under recent errors
        png = tmp_path / "status.png"
        shot = chromium_screenshot(url, png, tmp_path / "chromium",
                                   resolve="MAP gatekeep-admin.test 127.0.0.1")
        assert shot.returncode == 0, shot.stderr
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (1100, 900)
        assert len(data) > 20_000  # a blank or error page compresses to far less
        keep = os.environ.get("GATEKEEP_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, Path(keep) / "status.png")
    finally:
        for sock in held:
            sock.close()
