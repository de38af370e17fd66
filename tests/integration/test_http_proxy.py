"""
The HTTP reverse proxy (``http = "site"``) in a real gatekeep, against a backend that
echoes its raw request: the URI byte for byte, forwarding headers, respond and
health routes, streamed bodies, 502/504, smuggling refused, the access log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.clients import curl, require, tcp_exchange
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, HTTPEcho
from tests.integration.process import free_port, wait_until

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[service.edge]
default = "web"

[[service.edge.route]]
name = "web"
match.http = {{}}
http = "site"

[http.site]
health = "/health"
max_body = "64KiB"
connect_timeout = "2s"
response_timeout = "1s"
access_log = "{access_log}"

[[http.site.route]]
name = "wk-client"
path = ["/.well-known/matrix/client"]
[http.site.route.respond]
body = '{{"m.homeserver": {{"base_url": "https://matrix.example.test"}}}}'
[http.site.route.respond.headers]
"Content-Type" = "application/json"
"Access-Control-Allow-Origin" = "*"
"Access-Control-Allow-Methods" = "GET, HEAD, OPTIONS"

[[http.site.route]]
name = "down"
path = ["/down"]
to = "tcp:127.0.0.1:{closed_port}"

[[http.site.route]]
name = "media"
path = ["/_matrix/media"]
to = "tcp:127.0.0.1:{echo}"
max_body = "64MiB"

[[http.site.route]]
name = "echo"
to = "tcp:127.0.0.1:{echo}"
"""


@pytest.fixture(scope="module")
def access_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http-access") / "access.log"


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, http_echo: HTTPEcho,
             access_log: Path) -> Gatekeep:
    require("curl")
    config = CONFIG.format(echo=http_echo.port, closed_port=free_port(), access_log=access_log)
    return gatekeep_runner(config, ["edge"])


def test_uri_reaches_the_backend_byte_for_byte(gatekeep: Gatekeep) -> None:
    port = gatekeep.port("edge")
    paths = ["/a%2Fb", "/%25/x%2f", "//double//slash", "/a/../b/./c", "/_matrix/%2E%2E/x?q=%2F"]
    for path in paths:
        result = curl("--path-as-is", f"http://127.0.0.1:{port}{path}")
        assert result.status == 200, result
        assert result.body.startswith(f"GET {path} HTTP/1.1\r\n"), (path, result.body)


def test_forwarding_headers_replace_the_clients(gatekeep: Gatekeep) -> None:
    port = gatekeep.port("edge")
    result = curl("-H", "X-Forwarded-For: 203.0.113.66", "-H", "Forwarded: for=203.0.113.66",
                  "-H", "Host: www.example.test:8443", f"http://127.0.0.1:{port}/who")
    head = result.body.split("\r\n\r\n")[0].split("\r\n")
    assert "Host: www.example.test:8443" in head
    assert "X-Forwarded-For: 127.0.0.1" in head
    assert "X-Forwarded-Proto: http" in head
    assert "X-Forwarded-Host: www.example.test:8443" in head
    assert 'Forwarded: for=127.0.0.1;proto=http;host="www.example.test:8443"' in head
    assert "203.0.113.66" not in result.body


def test_well_known_and_cors_preflight(gatekeep: Gatekeep) -> None:
    port = gatekeep.port("edge")
    url = f"http://127.0.0.1:{port}/.well-known/matrix/client"
    got = curl("-i", url)
    assert got.status == 200
    assert "Access-Control-Allow-Origin: *" in got.body
    assert got.body.endswith('{"m.homeserver": {"base_url": "https://matrix.example.test"}}')
    preflight = curl("-i", "-X", "OPTIONS", "-H", "Origin: https://app.example",
                     "-H", "Access-Control-Request-Method: GET", url)
    assert preflight.status == 200
    assert "Access-Control-Allow-Methods: GET, HEAD, OPTIONS" in preflight.body


def test_health(gatekeep: Gatekeep) -> None:
    result = curl(f"http://127.0.0.1:{gatekeep.port('edge')}/health")
    assert (result.status, result.body) == (200, "OK\n")


def test_backend_down_is_502_and_slow_is_504(gatekeep: Gatekeep) -> None:
    port = gatekeep.port("edge")
    down = curl(f"http://127.0.0.1:{port}/down")
    assert down.status == 502
    assert down.body == "502 Bad Gateway: the backend is unreachable\n"
    slow = curl(f"http://127.0.0.1:{port}/slow/3")
    assert slow.status == 504
    assert slow.body.startswith("504 Gateway Timeout")


def test_bodies_stream_both_ways(gatekeep: Gatekeep, tmp_path: Path) -> None:
    port = gatekeep.port("edge")
    upload = tmp_path / "upload.bin"
    data = os.urandom(8 * 1024 * 1024)
    upload.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    fixed = curl("--data-binary", f"@{upload}", f"http://127.0.0.1:{port}/_matrix/media/up",
                 timeout=60)
    assert f"body={len(data)} sha256={digest}" in fixed.body
    chunked = curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}",
                   f"http://127.0.0.1:{port}/_matrix/media/up", timeout=60)
    assert f"body={len(data)} sha256={digest}" in chunked.body
    assert "Transfer-Encoding: chunked" in chunked.body
    big = curl("-o", str(tmp_path / "down.bin"), f"http://127.0.0.1:{port}/bytes/33554432",
               timeout=60)
    assert big.status == 200
    assert (tmp_path / "down.bin").stat().st_size == 33554432
    over = curl("--data-binary", f"@{upload}", f"http://127.0.0.1:{port}/small", timeout=30)
    assert over.status == 413


def test_keep_alive_and_pipelining(gatekeep: Gatekeep) -> None:
    port = gatekeep.port("edge")
    requests = b"".join(b"GET /n/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5))
    requests += b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n"
    out, _ = tcp_exchange(("127.0.0.1", port), requests, until=b"GET /close")
    order = [int(m) for m in re.findall(rb"GET /n/(\d+) HTTP/1.1", out)]
    assert order == [0, 1, 2, 3, 4]
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 6


def test_http10_keep_alive_reuses_the_connection(gatekeep: Gatekeep) -> None:
    # As ApacheBench's -k and older clients ask: HTTP/1.0 with Connection: keep-alive.
    url = f"http://127.0.0.1:{gatekeep.port('edge')}"
    done = subprocess.run(
        ["curl", "-sS", "--http1.0", "-H", "Connection: keep-alive", "--max-time", "10",
         "-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects} %{http_code}\n",
         f"{url}/n/1", f"{url}/health"], capture_output=True, text=True, timeout=20,
        check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["1 200", "0 200"], done  # no second connect


def test_smuggling_refused(gatekeep: Gatekeep) -> None:
    port = gatekeep.port("edge")
    attempt = (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
               b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
    out, _ = tcp_exchange(("127.0.0.1", port), b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n" + attempt)
    assert out.count(b"HTTP/1.1 200 OK") == 1
    assert b"HTTP/1.1 400 Bad Request" in out
    assert b"/smuggled" not in out


def test_access_log(gatekeep: Gatekeep, access_log: Path) -> None:
    port = gatekeep.port("edge")
    curl("-A", "tester/1.0", "-e", "https://ref.example/", f"http://127.0.0.1:{port}/logged?x=1")
    line_re = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                         r'"GET /logged\?x=1 HTTP/1\.1" 200 \d+ "https://ref\.example/" '
                         r'"tester/1\.0" \d+\.\d{3}$', re.MULTILINE)
    wait_until(lambda: bool(line_re.search(access_log.read_text())), 5, "the access log line")


def proc_wait(proc: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait for ``proc`` to exit, at most ``seconds`` (a sampling period, not a sync)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(seconds)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_client_download_keeps_memory_bounded(gatekeep: Gatekeep, tmp_path: Path) -> None:
    """64 MiB to a client reading at 16 MiB/s: gatekeep holds a window, not the body."""
    port = gatekeep.port("edge")
    size = 64 * 1024 * 1024
    before = _rss_kib(gatekeep.pid)
    peak = before
    out = tmp_path / "slow.bin"
    proc = subprocess.Popen(["curl", "-sS", "--limit-rate", "16M", "-o", str(out),
                             f"http://127.0.0.1:{port}/bytes/{size}"])
    try:
        while proc.poll() is None:
            peak = max(peak, _rss_kib(gatekeep.pid))
            proc_wait(proc, 0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out.stat().st_size == size
    assert peak - before < 16 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"
