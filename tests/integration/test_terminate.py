"""
The headline scenario of TLS termination: the example.test website and XMPP on one
port, with TLS terminated by gatekeep.

- curl (h2 and HTTP/1.1) and headless Chromium fetch the site: gatekeep terminates
  with ALPN h2/http1.1 and routes the decrypted stream on the *negotiated* protocol
  to nginx (h2c or HTTP/1.1), which learns the real client from a PROXY header.
- slixmpp with direct TLS and ALPN xmpp-client logs in and sends a message, once with
  TLS passed through to Prosody's direct-TLS port and once terminated by gatekeep and
  handed to Prosody's mod_net_proxy port, where our mod_gk_proxy_secure marks the
  session encrypted (c2s_require_encryption holds) and Prosody sees the client's own
  address.
- A ClientHello with the SNI of the terminated HTTPS route but ALPN xmpp-client goes
  to the XMPP route: the case traefik gets wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.certs import DOMAIN, Certificate
from tests.integration.clients import (
    CHROMIUM,
    chromium_dump_dom,
    curl,
    require,
    tls_handshake,
    xmpp_login,
)
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import XMPP_PASSWORD, Gatekeep, Prosody
from tests.integration.process import Peer, free_port, wait_until
from tests.integration.proxy_peers import (
    CLIENT_IP,
    ProsodyProxy,
    start_nginx,
    start_prosody_proxy,
)

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[[listener]]
name = "passthrough"
endpoint = "tcp:0:interface=127.0.0.1:backlog=64"   # another port 0
service = "passthrough"

[service.edge]
default = "web"

# First: SNI *and* ALPN xmpp-client. The web route below terminates the same name.
[[service.edge.route]]
name = "xmpp"
match.tls = {{ sni = ["{domain}"], alpn = ["xmpp-client"] }}
terminate = {{ certificates = "{certs}", alpn = ["xmpp-client"], service = "xmpp-inner" }}

[[service.edge.route]]
name = "web"
match.tls = {{ sni = ["{domain}", "*.{domain}"] }}
terminate = {{ certificates = "{certs}", alpn = ["h2", "http/1.1"], service = "web-inner" }}

[service.web-inner]
default = "http1"

[[service.web-inner.route]]
name = "h2"
match.tls = {{ alpn = ["h2"] }}
forward = {{ to = "tcp:127.0.0.1:{h2c}", proxy_protocol = "v1" }}

[[service.web-inner.route]]
name = "http1"
forward = {{ to = "tcp:127.0.0.1:{http1}", proxy_protocol = "v1" }}

[service.xmpp-inner]

[[service.xmpp-inner.route]]
name = "prosody"
forward = {{ to = "tcp:127.0.0.1:{secure}", proxy_protocol = "v2", proxy_tlvs = ["ssl"] }}

[service.passthrough]

[[service.passthrough.route]]
name = "xmpp-direct"
match.tls = {{ sni = ["{domain}"], alpn = ["xmpp-client"] }}
forward = {{ to = "tcp:127.0.0.1:{direct_tls}" }}
"""

NGINX = """
http {{
    {{temps}}
    access_log off;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{h2c} http2 proxy_protocol;
        location / {{
            return 200 "backend=h2c {echo}";
        }}
    }}
    server {{
        listen 127.0.0.1:{http1} proxy_protocol;
        location / {{
            return 200 "backend=http1 {echo}";
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def prosody_secure(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate,
) -> Iterator[ProsodyProxy]:
    require("prosody")
    started = start_prosody_proxy(tmp_path_factory.mktemp("prosody-secure"), certificate,
                                  secure_port=True)
    yield started
    started.prosody.peer.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Peer]]:
    require("nginx")
    h2c, http1 = free_port(), free_port()
    while http1 == h2c:
        http1 = free_port()
    root = tmp_path_factory.mktemp("nginx-site")
    echo = "remote=$proxy_protocol_addr proto=$server_protocol host=$host\\n"
    peer = start_nginx(root, NGINX.format(h2c=h2c, http1=http1, echo=echo), [h2c, http1])
    yield h2c, http1, peer
    peer.stop()


@pytest.fixture(scope="module")
def gatekeep(
    gatekeep_runner: GatekeepRunner, certificate: Certificate, prosody: Prosody,
    prosody_secure: ProsodyProxy, site: tuple[int, int, Peer],
) -> Gatekeep:
    return gatekeep_runner(CONFIG.format(
        domain=DOMAIN, certs=certificate.directory, h2c=site[0], http1=site[1],
        secure=prosody_secure.secure_port, direct_tls=prosody.direct_tls_port),
        ["edge", "passthrough"])


@pytest.mark.parametrize(
    ("name", "options", "version", "backend"),
    [
        (DOMAIN, [], "2", "h2c"),
        (DOMAIN, ["--http1.1"], "1.1", "http1"),
        (f"www.{DOMAIN}", [], "2", "h2c"),
    ],
)
def test_curl_through_terminated_tls(
    gatekeep: Gatekeep, certificate: Certificate, name: str, options: list[str],
    version: str, backend: str,
) -> None:
    require("curl")
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    result = curl("--resolve", f"{name}:{port}:127.0.0.1", "--interface", CLIENT_IP,
                  "--cacert", certificate.cert, *options, f"https://{name}:{port}/")
    assert result.returncode == 0, result.stderr
    assert (result.status, result.http_version) == (200, version)
    proto = "HTTP/2.0" if version == "2" else "HTTP/1.1"
    # nginx saw the decrypted request, from the real client (the PROXY header).
    assert result.body == f"backend={backend} remote={CLIENT_IP} proto={proto} host={name}\n"
    line = gatekeep.connection(mark, client=result.client)
    assert (line.listener, line.protocol) == ("edge", "tls")
    assert line.route == ("web>h2" if version == "2" else "web>http1")
    assert line.facts["sni"] == name
    assert line.facts["negotiated"] == ("h2" if version == "2" else "http/1.1")
    assert line.facts["tls_version"] == "TLSv1.3"


def test_headless_chromium_through_terminated_tls(gatekeep: Gatekeep, tmp_path: Path) -> None:
    require(CHROMIUM)
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    result = chromium_dump_dom(f"https://{DOMAIN}:{port}/", f"MAP {DOMAIN} 127.0.0.1",
                               tmp_path / "chromium")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backend=h2c remote=127.0.0.1 proto=HTTP/2.0 host={DOMAIN}" in result.stdout, (
        result.stdout + result.stderr[-3000:])
    line = gatekeep.connection(mark, route="web>h2")
    assert line.facts["negotiated"] == "h2"
    assert line.facts.get("ech") == "True", line.raw  # Chromium's hello, parsed whole


def test_slixmpp_passthrough_to_prosody_direct_tls(
    gatekeep: Gatekeep, prosody: Prosody, certificate: Certificate,
) -> None:
    result = xmpp_login(gatekeep.port("passthrough"), prosody.jid, XMPP_PASSWORD,
                        certificate.cert, direct_tls=True, alpn=["xmpp-client"], sni=DOMAIN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK jid={prosody.jid}/"), result.stdout
    assert " alpn=xmpp-client " in result.stdout
    local = re.search(r" local=(\S+) ", result.stdout)
    assert local is not None
    line = gatekeep.connection(0, client=local.group(1))
    assert line.route == "xmpp-direct"


def test_slixmpp_terminated_by_gatekeep_secure_and_real_address(
    gatekeep: Gatekeep, prosody_secure: ProsodyProxy, certificate: Certificate,
) -> None:
    result = xmpp_login(gatekeep.port("edge"), prosody_secure.jid, XMPP_PASSWORD,
                        certificate.cert, direct_tls=True, alpn=["xmpp-client"], sni=DOMAIN,
                        bind=CLIENT_IP)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.startswith(f"OK jid={prosody_secure.jid}/"), result.stdout
    assert " alpn=xmpp-client " in result.stdout  # negotiated with gatekeep
    local = re.search(r" local=(\S+):(\d+) ", result.stdout)
    assert local is not None and local.group(1) == CLIENT_IP, result.stdout
    port = local.group(2)
    line = gatekeep.connection(0, client=f"{CLIENT_IP}:{port}")
    assert (line.listener, line.route) == ("edge", "xmpp>prosody")
    assert line.facts["negotiated"] == "xmpp-client"
    assert line.bytes_in > 1000 and line.bytes_out > 1000, line.raw

    def seen() -> bool:
        return f"ip={CLIENT_IP} port={port}" in prosody_secure.log_text()

    wait_until(seen, 10.0, "Prosody's session to have the client's address",
               output=prosody_secure.log_text)
    text = prosody_secure.log_text()
    assert re.search(rf"gk_proxy_secure: encrypted by the TLS-terminating proxy 127\.0\.0\.1 "
                     rf"\(client {CLIENT_IP}, port {prosody_secure.secure_port}\)", text), text
    assert f"Authenticated as {prosody_secure.jid}" in text


def test_https_sni_with_alpn_xmpp_client_goes_to_xmpp(
    gatekeep: Gatekeep, certificate: Certificate,
) -> None:
    """traefik's bug: an HTTP router with TLS on the same SNI pre-empts the XMPP one."""
    mark = gatekeep.mark()
    xmpp = tls_handshake(gatekeep.port("edge"), DOMAIN, ["xmpp-client"], certificate.cert)
    assert xmpp.ok and xmpp.alpn == "xmpp-client", xmpp
    web = tls_handshake(gatekeep.port("edge"), DOMAIN, ["h2", "http/1.1"], certificate.cert)
    assert web.ok and web.alpn == "h2", web
    # Each connection's line names the outer and the inner route it took.
    gatekeep.connection(mark, route="xmpp>prosody")
    gatekeep.connection(mark, route="web>h2")
