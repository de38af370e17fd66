"""
Scenario 6: a client that sends nothing (a server-speaks-first protocol such as SMTP)
is given to the service's default route when ``detect_timeout`` passes, and then
gets the backend's banner: not before the deadline, and promptly after it.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.clients import curl
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import BannerServer, Gatekeep, Prosody, Web

pytestmark = pytest.mark.slow

DETECT_TIMEOUT = 1.0

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
detect_timeout = "{timeout}s"

[service.edge]
default = "smtp"

[[service.edge.route]]
name = "xmpp-tls"
match.tls = {{ alpn = ["xmpp-client"] }}
forward = {{ to = "tcp:127.0.0.1:{direct_tls}" }}

[[service.edge.route]]
name = "xmpp"
match.xmpp = {{}}
forward = {{ to = "tcp:127.0.0.1:{c2s}" }}

[[service.edge.route]]
name = "web"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{http}" }}

[[service.edge.route]]
name = "smtp"
forward = {{ to = "tcp:127.0.0.1:{banner}" }}
"""


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, prosody: Prosody, web: Web,
             banner_server: BannerServer) -> Gatekeep:
    config = CONFIG.format(timeout=DETECT_TIMEOUT, direct_tls=prosody.direct_tls_port,
                           c2s=prosody.c2s_port, http=web.http_port, banner=banner_server.port)
    return gatekeep_runner(config, ["edge"])


def test_silent_client_gets_the_banner_after_the_timeout(
    gatekeep: Gatekeep, banner_server: BannerServer,
) -> None:
    mark = gatekeep.mark()
    backend_before = len(banner_server.peer.output())
    with socket.create_connection(("127.0.0.1", gatekeep.port("edge")), timeout=10) as sock, \
            sock.makefile("rwb", buffering=0) as stream:
        connected = time.monotonic()
        banner = stream.readline()
        waited = time.monotonic() - connected
        assert banner == banner_server.banner.encode() + b"\r\n"
        assert DETECT_TIMEOUT <= waited < DETECT_TIMEOUT + 2, waited
        # The backend is live after the banner: a command round trip and a clean close.
        stream.write(b"NOOP\r\nQUIT\r\n")
        assert stream.readline() == b"250 ok\r\n"
        assert stream.readline() == b"221 bye\r\n"
        assert stream.readline() == b""

    line = gatekeep.connection(mark, route="smtp")
    assert line.protocol == "unknown"
    assert line.facts == {}
    assert line.backend == f"tcp:127.0.0.1:{banner_server.port}"
    assert line.bytes_in == len(b"NOOP\r\nQUIT\r\n")
    assert line.bytes_out == len(banner) + len(b"250 ok\r\n221 bye\r\n")
    assert "connection from 127.0.0.1:" in banner_server.peer.output()[backend_before:]


def test_a_client_that_speaks_is_not_delayed(gatekeep: Gatekeep) -> None:
    # The deadline is only for silent clients: HTTP is routed as soon as it is seen.
    mark = gatekeep.mark()
    result = curl(f"http://127.0.0.1:{gatekeep.port('edge')}/")
    assert result.status == 200, result
    assert result.body.startswith("backend=web-http "), result.body
    line = gatekeep.connection(mark, client=result.client)
    assert line.route == "web"
    assert line.time < DETECT_TIMEOUT / 2, line.raw
