"""
gatekeep in front of real PROXY protocol receivers, each checked in its own records:

- Prosody's mod_net_proxy (v1 and v2 with TLVs): a slixmpp client from 127.0.0.5
  logs in through gatekeep; Prosody logs the header and gives the session that
  address (``gk_sessionip``).
- HAProxy ``accept-proxy``: its log shows the client address and the v2 TLVs it can
  log (AUTHORITY from the ClientHello's SNI, the UNIQUE_ID gatekeep made up).
- nginx ``listen ... proxy_protocol``: ``$proxy_protocol_addr:$proxy_protocol_port``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.integration.certs import Certificate
from tests.integration.clients import curl, require, xmpp_login
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import XMPP_PASSWORD, Gatekeep, Web
from tests.integration.process import Peer, free_port, wait_until
from tests.integration.proxy_peers import (
    CLIENT_IP,
    ProsodyProxy,
    start_haproxy,
    start_nginx,
    start_prosody_proxy,
)

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "v1"
endpoint = "tcp:0:interface=127.0.0.1"
service = "v1"

[[listener]]
name = "v2"
endpoint = "tcp:port=0:interface=127.0.0.1"  # the same string twice counts as one endpoint
service = "v2"

[service.v1]
default = "xmpp"

[[service.v1.route]]
name = "xmpp"
match.xmpp = {{}}
forward = {{ to = "tcp:127.0.0.1:{prosody}", proxy_protocol = "v1" }}

[[service.v1.route]]
name = "http"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{nginx}", proxy_protocol = "v1" }}

[service.v2]
default = "xmpp"

[[service.v2.route]]
name = "xmpp"
match.xmpp = {{}}

[service.v2.route.forward]
to = "tcp:127.0.0.1:{prosody}"
proxy_protocol = "v2"
proxy_tlvs = ["alpn", "authority", "unique_id", "crc32c"]

[[service.v2.route]]
name = "https"
match.tls = {{}}

[service.v2.route.forward]
to = "tcp:127.0.0.1:{haproxy}"
proxy_protocol = "v2"
proxy_tlvs = ["alpn", "authority", "unique_id", "crc32c"]

[[service.v2.route]]
name = "http"
match.http = {{}}

[service.v2.route.forward]
to = "tcp:127.0.0.1:{nginx}"
proxy_protocol = "v2"
proxy_tlvs = ["unique_id", "crc32c"]
"""

HAPROXY = """
global
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend from_gatekeep
    bind 127.0.0.1:{port} accept-proxy
    log-format "gkcheck client=%ci:%cp authority=%[fc_pp_authority] uid=%[fc_pp_unique_id]"
    default_backend web_tls
backend web_tls
    server web 127.0.0.1:{https}
"""

NGINX = """
http {{
{{temps}}
    log_format pp 'gkcheck client=$proxy_protocol_addr:$proxy_protocol_port peer=$remote_addr';
    access_log {root}/access.log pp;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            return 200 "pp=$proxy_protocol_addr:$proxy_protocol_port\\n";
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def prosody_proxy(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate,
) -> Iterator[ProsodyProxy]:
    require("prosody")
    started = start_prosody_proxy(tmp_path_factory.mktemp("prosody-proxy"), certificate)
    yield started
    started.prosody.peer.stop()


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory: pytest.TempPathFactory, web: Web) -> Iterator[tuple[int, Peer]]:
    require("haproxy")
    port = free_port()
    peer = start_haproxy(tmp_path_factory.mktemp("haproxy-back"),
                         HAPROXY.format(port=port, https=web.https_port), [("127.0.0.1", port)])
    yield port, peer
    peer.stop()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Peer]]:
    require("nginx")
    port = free_port()
    root = tmp_path_factory.mktemp("nginx-pp")
    peer = start_nginx(root, NGINX.format(port=port, root=root), [port])
    yield port, peer
    peer.stop()


@pytest.fixture(scope="module")
def gatekeep(
    gatekeep_runner: GatekeepRunner, prosody_proxy: ProsodyProxy,
    haproxy: tuple[int, Peer], nginx: tuple[int, Peer],
) -> Gatekeep:
    return gatekeep_runner(CONFIG.format(prosody=prosody_proxy.proxy_port, haproxy=haproxy[0],
                                         nginx=nginx[0]), ["v1", "v2"])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_prosody_mod_net_proxy_sees_the_client(
    gatekeep: Gatekeep, prosody_proxy: ProsodyProxy, certificate: Certificate, version: str,
) -> None:
    result = xmpp_login(gatekeep.port(version), prosody_proxy.jid, XMPP_PASSWORD,
                        certificate.cert, direct_tls=False, bind=CLIENT_IP)
    assert result.returncode == 0, result.stderr
    local = re.search(r" local=(\S+):(\d+) ", result.stdout)
    assert local is not None and local.group(1) == CLIENT_IP, result.stdout
    port = local.group(2)
    line = gatekeep.connection(0, client=f"{CLIENT_IP}:{port}")
    assert (line.listener, line.route) == (version, "xmpp")

    def seen() -> bool:
        return f"gk_sessionip bind jid={prosody_proxy.jid}/" in prosody_proxy.log_text() \
            and f"ip={CLIENT_IP} port={port}" in prosody_proxy.log_text()

    wait_until(seen, 10.0, "Prosody's session to have the client's address",
               output=prosody_proxy.log_text)
    text = prosody_proxy.log_text()
    # mod_net_proxy's own line: the header came from gatekeep (127.0.0.1).
    assert re.search(rf"Received PROXY header from 127\.0\.0\.1: .*src={CLIENT_IP}:{port}\b",
                     text), text[-3000:]
    assert f"Passing proxied connection {CLIENT_IP}:{port} to service c2s" in text


def test_haproxy_accept_proxy_logs_client_and_tlvs(
    gatekeep: Gatekeep, haproxy: tuple[int, Peer], web: Web, certificate: Certificate,
) -> None:
    require("curl")
    port = gatekeep.port("v2")
    result = curl("--resolve", f"www.example.test:{port}:127.0.0.1", "--interface", CLIENT_IP,
                  "--cacert", certificate.cert, f"https://www.example.test:{port}/")
    assert result.status == 200, result.stderr
    assert "backend=web-https sni=www.example.test alpn=h2" in result.body
    client = f"{CLIENT_IP}:{result.local_port}"
    line = gatekeep.connection(0, client=client, route="https")
    unique_id = line.facts["unique_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", unique_id)
    match = haproxy[1].wait_output(rf"gkcheck client={re.escape(client)} .*$")
    assert match.group(0).split()[2:] == ["authority=www.example.test", f"uid={unique_id}"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_listen_proxy_protocol(
    gatekeep: Gatekeep, nginx: tuple[int, Peer], version: str,
) -> None:
    require("curl")
    result = curl("--interface", CLIENT_IP, f"http://127.0.0.1:{gatekeep.port(version)}/")
    assert result.status == 200, result.stderr
    client = f"{CLIENT_IP}:{result.local_port}"
    assert result.body == f"pp={client}\n"
    gatekeep.connection(0, client=client, route="http")
    log = nginx[1].log_path.parent / "access.log"
    wait_until(lambda: f"gkcheck client={client} peer=127.0.0.1" in log.read_text(), 10.0,
               "nginx's access log line")
