"""
Scenario 2: TLS with SNI example.test and an ALPN other than ``xmpp-client`` goes,
untouched, to the nginx HTTPS backend: curl (h2 and HTTP/1.1) and headless Chromium,
whose post-quantum ClientHello (X25519MLKEM768, about 2 KB) gatekeep must parse whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.certs import DOMAIN, Certificate
from tests.integration.clients import CHROMIUM, chromium_dump_dom, curl, require
from tests.integration.configs import start_tls_passthrough
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, Prosody, Web

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, prosody: Prosody, web: Web) -> Gatekeep:
    return start_tls_passthrough(gatekeep_runner, prosody, web)


@pytest.mark.parametrize(
    ("name", "options", "alpn_sent", "alpn_chosen", "version"),
    [
        (DOMAIN, [], "h2,http/1.1", "h2", "2"),
        (DOMAIN, ["--http1.1"], "http/1.1", "http/1.1", "1.1"),
        (f"www.{DOMAIN}", [], "h2,http/1.1", "h2", "2"),  # the wildcard pattern
    ],
)
def test_curl_reaches_the_https_backend(
    gatekeep: Gatekeep, web: Web, certificate: Certificate, name: str, options: list[str],
    alpn_sent: str, alpn_chosen: str, version: str,
) -> None:
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    result = curl("--resolve", f"{name}:{port}:127.0.0.1", "--cacert", certificate.cert,
                  *options, f"https://{name}:{port}/")
    assert result.returncode == 0, result.stderr
    assert result.status == 200
    assert result.http_version == version
    assert result.body.startswith(
        f"backend=web-https sni={name} alpn={alpn_chosen} host={name} "), result.body

    line = gatekeep.connection(mark, client=result.client)
    assert (line.listener, line.protocol, line.route) == ("edge", "tls", "web-https")
    assert line.facts["sni"] == name
    assert line.facts["alpn"] == alpn_sent
    assert line.backend == f"tcp:127.0.0.1:{web.https_port}"
    assert line.bytes_out > len(result.body)


def test_headless_chromium_gets_the_page(gatekeep: Gatekeep, tmp_path: Path) -> None:
    require(CHROMIUM)
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    result = chromium_dump_dom(f"https://{DOMAIN}:{port}/", f"MAP {DOMAIN} 127.0.0.1",
                               tmp_path / "chromium")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backend=web-https sni={DOMAIN} alpn=h2 host={DOMAIN} " in result.stdout, (
        result.stdout + result.stderr[-3000:])

    # Chromium's hello is the only one here with ECH (GREASE) and post-quantum key
    # shares; the log line shows gatekeep parsed all of it: SNI, ALPN, versions, ECH.
    line = gatekeep.connection(mark, route="web-https")
    assert line.protocol == "tls"
    assert line.facts["sni"] == DOMAIN
    assert line.facts["alpn"] == "h2,http/1.1"
    assert line.facts["versions"].startswith("TLSv1.3")
    assert line.facts.get("ech") == "True", line.raw
    assert line.bytes_in > 1500, line.raw  # the ~2 KB hello plus the request
    others = [c for c in gatekeep.connections(mark) if c.route != "web-https"]
    assert not others, [c.raw for c in others]
