"""
Scenario 3: a plain XMPP stream header goes to Prosody's c2s port, and STARTTLS
works end to end through gatekeep. Both header forms clients send are detected:
with an XML declaration and double quotes, and (like slixmpp) without one, in
single quotes.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.certs import DOMAIN, Certificate
from tests.integration.clients import require, socat_exchange, xmpp_login
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import XMPP_PASSWORD, Gatekeep, Prosody

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
detect_timeout = "5s"

[service.edge]
default = "refuse"

[[service.edge.route]]
name = "xmpp-tls"
match.tls = {{ alpn = ["xmpp-client"] }}
forward = {{ to = "tcp:127.0.0.1:{direct_tls}" }}

[[service.edge.route]]
name = "xmpp-plain"
match.xmpp = {{ to = ["example.test"], ns = ["jabber:client"] }}
forward = {{ to = "tcp:127.0.0.1:{c2s}" }}

[[service.edge.route]]
name = "refuse"
reject = {{}}
"""

DOUBLE_QUOTED = (
    b'<?xml version="1.0"?><stream:stream to="example.test" xmlns="jabber:client" '
    b'xmlns:stream="http://etherx.jabber.org/streams" version="1.0">')
SINGLE_QUOTED = (
    b"<stream:stream to='example.test' xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, prosody: Prosody) -> Gatekeep:
    return gatekeep_runner(
        CONFIG.format(c2s=prosody.c2s_port, direct_tls=prosody.direct_tls_port), ["edge"])


def test_slixmpp_starttls_login_and_message(
    gatekeep: Gatekeep, prosody: Prosody, certificate: Certificate,
) -> None:
    mark = gatekeep.mark()
    result = xmpp_login(gatekeep.port("edge"), prosody.jid, XMPP_PASSWORD, certificate.cert,
                        direct_tls=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK jid={prosody.jid}/"), result.stdout
    assert re.search(r" tls=TLSv1\.[23] ", result.stdout), result.stdout  # STARTTLS happened
    local = re.search(r" local=(\S+) ", result.stdout)
    assert local is not None

    line = gatekeep.connection(mark, client=local.group(1))
    assert (line.listener, line.protocol, line.route) == ("edge", "xmpp", "xmpp-plain")
    assert line.facts["to"] == DOMAIN
    assert line.facts["ns"] == "jabber:client"
    assert line.backend == f"tcp:127.0.0.1:{prosody.c2s_port}"
    assert line.bytes_in > 1000 and line.bytes_out > 1000, line.raw


@pytest.mark.parametrize("header", [DOUBLE_QUOTED, SINGLE_QUOTED],
                         ids=["declaration-double-quotes", "bare-single-quotes"])
def test_raw_stream_header_gets_prosodys_features(
    gatekeep: Gatekeep, prosody: Prosody, header: bytes,
) -> None:
    require("socat")
    mark = gatekeep.mark()
    reply = socat_exchange(f"TCP:127.0.0.1:{gatekeep.port('edge')}", header,
                           until=b"</stream:features>")
    assert b"<stream:features>" in reply, reply
    # Prosody requires TLS on c2s: its features offer exactly STARTTLS.
    features = reply[reply.index(b"<stream:features>"):]
    assert b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'" in features, reply
    assert b"from='example.test'" in reply, reply  # Prosody answered as the host asked for

    line = gatekeep.connection(mark, route="xmpp-plain")
    assert line.protocol == "xmpp"
    assert line.facts["to"] == DOMAIN
    assert line.bytes_in == len(header)
