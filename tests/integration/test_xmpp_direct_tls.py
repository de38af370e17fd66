"""
Scenario 1: TLS with ALPN ``xmpp-client`` and SNI example.test goes, untouched, to
Prosody's direct-TLS port, while the same SNI without that ALPN goes to the web.
"""

from __future__ import annotations

import re

import pytest

from tests.integration.certs import DOMAIN, Certificate
from tests.integration.clients import tls_handshake, xmpp_login
from tests.integration.configs import start_tls_passthrough
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import XMPP_PASSWORD, Gatekeep, Prosody, Web

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, prosody: Prosody, web: Web) -> Gatekeep:
    return start_tls_passthrough(gatekeep_runner, prosody, web)


def test_slixmpp_direct_tls_login_and_message(
    gatekeep: Gatekeep, prosody: Prosody, certificate: Certificate,
) -> None:
    mark = gatekeep.mark()
    prosody_before = prosody.log.read_text()
    result = xmpp_login(gatekeep.port("edge"), prosody.jid, XMPP_PASSWORD, certificate.cert,
                        direct_tls=True, alpn=["xmpp-client"], sni=DOMAIN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK jid={prosody.jid}/"), result.stdout
    assert " alpn=xmpp-client " in result.stdout  # Prosody's answer, so end to end
    assert re.search(r" tls=TLSv1\.[23] ", result.stdout), result.stdout
    local = re.search(r" local=(\S+) ", result.stdout)
    assert local is not None, result.stdout

    line = gatekeep.connection(mark, client=local.group(1))
    assert line.listener == "edge"
    assert line.protocol == "tls"
    assert line.facts["sni"] == DOMAIN
    assert line.facts["alpn"] == "xmpp-client"
    assert line.route == "xmpp-tls"
    assert line.backend == f"tcp:127.0.0.1:{prosody.direct_tls_port}"
    # A login, a bound resource and a message each way: far more than a handshake.
    assert line.bytes_in > 1000 and line.bytes_out > 1000, line.raw

    # Prosody itself saw alice log in (its log has no client addresses at info level).
    new = prosody.log.read_text()[len(prosody_before):]
    assert f"Authenticated as {prosody.jid}" in new, new


def test_same_sni_other_alpn_is_not_sent_to_prosody(
    gatekeep: Gatekeep, prosody: Prosody, certificate: Certificate,
) -> None:
    # Prosody accepts ALPN xmpp-client; nginx (the web route) would refuse it with
    # no_application_protocol. A negotiated h2 shows the web route was taken.
    mark = gatekeep.mark()
    xmpp = tls_handshake(gatekeep.port("edge"), DOMAIN, ["xmpp-client"], certificate.cert)
    assert xmpp.ok and xmpp.alpn == "xmpp-client", xmpp
    web = tls_handshake(gatekeep.port("edge"), DOMAIN, ["h2"], certificate.cert)
    assert web.ok and web.alpn == "h2", web
    lines = [gatekeep.connection(mark, route=r) for r in ("xmpp-tls", "web-https")]
    assert [line.facts["alpn"] for line in lines] == ["xmpp-client", "h2"]
