"""
Scenario 7: the backend is down (its port is closed). Each client learns it in its
own protocol, promptly: HTTP 502, a TLS internal_error alert, an XMPP stream error
``remote-connection-failed``; SSH (which has no such message) a plain close.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.certs import DOMAIN, Certificate
from tests.integration.clients import (
    curl,
    require,
    run,
    socat_exchange,
    tcp_exchange,
    tls_handshake,
)
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep
from tests.integration.process import free_port

pytestmark = pytest.mark.slow

PROMPT = 3.0  # seconds: a refused connect must not look like a hang

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
detect_timeout = "5s"

[service.edge]

[[service.edge.route]]
name = "tls"
match.tls = {{}}
forward = {{ to = "tcp:127.0.0.1:{closed}" }}

[[service.edge.route]]
name = "xmpp"
match.xmpp = {{}}
forward = {{ to = "tcp:127.0.0.1:{closed}" }}

[[service.edge.route]]
name = "http"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{closed}" }}

[[service.edge.route]]
name = "ssh"
match.ssh = {{}}
forward = {{ to = "tcp:127.0.0.1:{closed}" }}
"""


@pytest.fixture(scope="module")
def closed_port() -> int:
    return free_port()  # nothing listens there: connects are refused at once


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, closed_port: int) -> Gatekeep:
    return gatekeep_runner(CONFIG.format(closed=closed_port), ["edge"])


def _check_line(gatekeep: Gatekeep, mark: int, route: str, closed_port: int) -> None:
    line = gatekeep.connection(mark, route=route)
    assert line.protocol == route
    assert line.backend == f"tcp:127.0.0.1:{closed_port}"
    assert line.close.startswith("backend unreachable"), line.raw
    assert line.time < PROMPT, line.raw


def test_http_gets_502(gatekeep: Gatekeep, closed_port: int) -> None:
    mark = gatekeep.mark()
    result = curl("-H", "Host: www.example.test", f"http://127.0.0.1:{gatekeep.port('edge')}/",
                  timeout=PROMPT + 5)
    assert result.status == 502, result
    assert "502 Bad Gateway" in result.body
    _check_line(gatekeep, mark, "http", closed_port)


def test_tls_gets_an_internal_error_alert(
    gatekeep: Gatekeep, closed_port: int, certificate: Certificate,
) -> None:
    mark = gatekeep.mark()
    result = tls_handshake(gatekeep.port("edge"), DOMAIN, ["h2"], certificate.cert,
                           timeout=PROMPT)
    assert not result.ok
    assert "TLSV1_ALERT_INTERNAL_ERROR" in result.error, result.error
    _check_line(gatekeep, mark, "tls", closed_port)


def test_openssl_s_client_sees_the_alert(gatekeep: Gatekeep, closed_port: int) -> None:
    require("openssl")
    mark = gatekeep.mark()
    result = run(["openssl", "s_client", "-connect", f"127.0.0.1:{gatekeep.port('edge')}",
                  "-servername", DOMAIN, "-alpn", "h2"], stdin=b"", timeout=PROMPT + 5)
    assert result.returncode != 0
    assert "alert internal error" in result.stderr, result.stderr
    assert result.elapsed < PROMPT
    _check_line(gatekeep, mark, "tls", closed_port)


def test_xmpp_gets_a_stream_error(gatekeep: Gatekeep, closed_port: int) -> None:
    require("socat")
    mark = gatekeep.mark()
    header = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    started = time.monotonic()
    reply = socat_exchange(f"TCP:127.0.0.1:{gatekeep.port('edge')}", header,
                           until=None, timeout=PROMPT + 2)
    assert time.monotonic() - started < PROMPT
    assert b"<stream:error><remote-connection-failed " in reply, reply
    assert b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'" in reply
    assert reply.endswith(b"</stream:stream>"), reply  # closed by gatekeep, not by our deadline
    _check_line(gatekeep, mark, "xmpp", closed_port)


def test_ssh_is_closed(gatekeep: Gatekeep, closed_port: int) -> None:
    mark = gatekeep.mark()
    reply, elapsed = tcp_exchange(("127.0.0.1", gatekeep.port("edge")),
                                  b"SSH-2.0-gatekeep_test\r\n", timeout=PROMPT + 2)
    assert reply == b""
    assert elapsed < PROMPT
    _check_line(gatekeep, mark, "ssh", closed_port)


def test_error_reply_is_counted_as_bytes_out(gatekeep: Gatekeep) -> None:
    # CONFIG.md: the connection line has the bytes sent to the client, the 502
    # gatekeep wrote itself included.
    mark = gatekeep.mark()
    reply, _ = tcp_exchange(("127.0.0.1", gatekeep.port("edge")),
                            b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
                            timeout=PROMPT + 2)
    assert reply.startswith(b"HTTP/1.1 502 "), reply
    line = gatekeep.connection(mark, route="http")
    assert line.bytes_out == len(reply), line.raw
