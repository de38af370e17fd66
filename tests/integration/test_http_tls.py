"""
The HTTP reverse proxy behind ``terminate``: HTTP/1.1 and HTTP/2 (ALPN h2) from curl
and from headless Chromium, which loads a page over h2 and opens a WebSocket through
gatekeep to the backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.certs import Certificate
from tests.integration.clients import CHROMIUM, curl, require, run
from tests.integration.configs import TLS_TO_HTTP_SITE
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, HTTPEcho
from tests.integration.process import wait_until

pytestmark = pytest.mark.slow

CONFIG = TLS_TO_HTTP_SITE + """
[http.site]
health = "/health"
access_log = "{access_log}"

[[http.site.route]]
name = "echo"
host = ["www.example.test"]
to = "tcp:127.0.0.1:{echo}"
"""


@pytest.fixture(scope="module")
def access_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("http-tls") / "access.log"


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, http_echo: HTTPEcho, certificate: Certificate,
             access_log: Path) -> Gatekeep:
    require("curl")
    config = CONFIG.format(certs=certificate.directory, echo=http_echo.port,
                           access_log=access_log)
    return gatekeep_runner(config, ["edge"])


def _get(gatekeep: Gatekeep, certificate: Certificate, *args: str) -> tuple[int, str, str]:
    port = gatekeep.port("edge")
    result = curl("--cacert", str(certificate.cert), "--resolve",
                  f"www.example.test:{port}:127.0.0.1", *args)
    return result.status, result.http_version, result.body


def test_http2_over_tls(gatekeep: Gatekeep, certificate: Certificate) -> None:
    port = gatekeep.port("edge")
    status, version, body = _get(gatekeep, certificate, "--http2", "--path-as-is",
                                 f"https://www.example.test:{port}/a%2F//../b?c=%25")
    assert (status, version) == (200, "2"), body
    head = body.split("\r\n\r\n")[0].split("\r\n")
    assert head[0] == "GET /a%2F//../b?c=%25 HTTP/1.1"
    assert "X-Forwarded-Proto: https" in head
    assert "X-Forwarded-For: 127.0.0.1" in head
    assert f"host: www.example.test:{port}" in head


def test_http2_request_body(gatekeep: Gatekeep, certificate: Certificate,
                            tmp_path: Path) -> None:
    port = gatekeep.port("edge")
    (tmp_path / "body").write_bytes(b"x" * 200000)
    status, version, body = _get(gatekeep, certificate, "--http2", "--data-binary",
                                 f"@{tmp_path / 'body'}", f"https://www.example.test:{port}/up")
    assert (status, version) == (200, "2")
    assert "body=200000 " in body


def test_http11_over_tls(gatekeep: Gatekeep, certificate: Certificate) -> None:
    port = gatekeep.port("edge")
    status, version, body = _get(gatekeep, certificate, "--http1.1",
                                 f"https://www.example.test:{port}/one")
    assert (status, version) == (200, "1.1")
    assert "X-Forwarded-Proto: https" in body
    health = _get(gatekeep, certificate, "--http2", f"https://www.example.test:{port}/health")
    assert health == (200, "2", "OK\n")


def test_chromium_page_over_h2_and_websocket(gatekeep: Gatekeep, access_log: Path,
                                             tmp_path: Path) -> None:
    require(CHROMIUM)
    port = gatekeep.port("edge")
    home = tmp_path / "chromium"
    home.mkdir()
    env_home = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
                "XDG_CACHE_HOME": str(home / "cache")}
    result = run([
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={home / 'profile'}",
        "--host-resolver-rules=MAP www.example.test 127.0.0.1, MAP * ~NOTFOUND",
        "--ignore-certificate-errors", "--dump-dom",
        f"https://www.example.test:{port}/page"], timeout=90, env=env_home)
    assert "page loaded" in result.stdout, result
    assert "ws answer: echo:ping" in result.stdout, result.stdout

    def logged() -> bool:
        text = access_log.read_text()
        return '"GET /page HTTP/2" 200' in text and '"GET /ws HTTP/1.1" 101' in text
    wait_until(logged, 5, "the page (h2) and WebSocket (101) lines in the access log")
