"""
gatekeep behind real load balancers that send the PROXY protocol: HAProxy
``send-proxy`` (v1) and ``send-proxy-v2`` (with CRC32C, a unique id and health
checks, which arrive as LOCAL headers), nginx ``stream`` with ``proxy_protocol on``
(v1). The client connects from 127.0.0.5; gatekeep must log that address, not the
balancer's 127.0.0.1, and refuse a client that skips the balancer.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.clients import require
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, Web, parse_connection_line
from tests.integration.process import Peer, free_port, ipv6_loopback
from tests.integration.proxy_peers import CLIENT_IP, connect_from, start_haproxy, start_nginx

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "lb"
endpoint = "tcp:0:interface=\\\\:\\\\:"
service = "web"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32", "::1/128"]
detect_timeout = "2s"

[service.web]
default = "http"

[[service.web.route]]
name = "http"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{http}" }}
"""

HAPROXY = """
global
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{v1}
    default_backend gatekeep_v1
frontend v2
    bind 127.0.0.1:{v2}
    {v6_bind}
    unique-id-format lb-%ci-%cp
    default_backend gatekeep_v2
backend gatekeep_v1
    server gk 127.0.0.1:{gk} send-proxy
backend gatekeep_v2
    server gk 127.0.0.1:{gk} send-proxy-v2 proxy-v2-options crc32c,unique-id check inter 1s
"""

NGINX = """
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{gk};
        proxy_protocol on;
    }}
}}
"""

REQUEST = b"GET /pp HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, web: Web) -> Gatekeep:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback (the listener binds ::)")
    return gatekeep_runner(CONFIG.format(http=web.http_port), ["lb"])


@pytest.fixture(scope="module")
def haproxy(
    gatekeep: Gatekeep, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, int]]:
    require("haproxy")
    v1, v2 = free_port(), free_port(also=["::1"])
    config = HAPROXY.format(v1=v1, v2=v2, gk=gatekeep.port("lb"), v6_bind=f"bind [::1]:{v2}")
    peer = start_haproxy(tmp_path_factory.mktemp("haproxy-front"), config,
                         [("127.0.0.1", v1), ("127.0.0.1", v2)])
    yield {"v1": v1, "v2": v2}
    peer.stop()


@pytest.fixture(scope="module")
def nginx_stream(gatekeep: Gatekeep, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    require("nginx")
    port = free_port()
    peer: Peer = start_nginx(tmp_path_factory.mktemp("nginx-stream-front"),
                             NGINX.format(port=port, gk=gatekeep.port("lb")), [port])
    yield port
    peer.stop()


def fetch(source: str, address: tuple[str, int]) -> tuple[bytes, str]:
    """An HTTP request from ``source``; the reply, and our address as gatekeep logs it."""
    with connect_from(source, address) as sock:
        host, port = sock.getsockname()[:2]
        sock.sendall(REQUEST)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_send_proxy(gatekeep: Gatekeep, haproxy: dict[str, int], version: str) -> None:
    mark = gatekeep.mark()
    reply, client = fetch(CLIENT_IP, ("127.0.0.1", haproxy[version]))
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply
    assert b"backend=web-http host=www.example.test" in reply
    line = gatekeep.connection(mark, client=client)
    assert line.route == "http" and line.protocol == "http"
    assert line.facts["proxy_version"] == version[1]
    assert line.facts["proxy_via"].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))
    if version == "v2":
        # HAProxy's CRC32C was verified (else the connection is refused) and its
        # unique id is a fact.
        assert line.facts["proxy_unique_id"] == "lb-" + client.replace(":", "-")


def test_haproxy_over_ipv6(gatekeep: Gatekeep, haproxy: dict[str, int]) -> None:
    mark = gatekeep.mark()
    reply, client = fetch("::1", ("::1", haproxy["v2"]))
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply
    line = gatekeep.connection(mark, client=client)
    assert client.startswith("[::1]:")
    assert line.facts["proxy_family"] == "tcp6"


def test_haproxy_health_checks_are_local(gatekeep: Gatekeep, haproxy: dict[str, int]) -> None:
    # `check` connects, sends a LOCAL header and closes: accepted, the real peer kept.
    raw = gatekeep.log.wait_for(lambda text: "proxy_command=local" in text, 0, 10.0,
                                "a health check's connection line")
    line = parse_connection_line(raw)
    assert line is not None
    assert line.client.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))
    assert not line.close.startswith(("malformed", "no PROXY", "incomplete")), line.raw


def test_nginx_stream_proxy_protocol(gatekeep: Gatekeep, nginx_stream: int) -> None:
    mark = gatekeep.mark()
    reply, client = fetch(CLIENT_IP, ("127.0.0.1", nginx_stream))
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply
    line = gatekeep.connection(mark, client=client)
    assert line.facts["proxy_version"] == "1"
    assert line.facts["proxy_family"] == "tcp4"


def test_a_client_skipping_the_balancer_is_refused(gatekeep: Gatekeep) -> None:
    mark = gatekeep.mark()
    reply, client = fetch(CLIENT_IP, ("127.0.0.1", gatekeep.port("lb")))
    assert reply == b""
    # gatekeep listens on :: here, so it sees the IPv4 client as IPv4-mapped IPv6.
    port = client.rpartition(":")[2]
    raw = gatekeep.log.wait_for(
        lambda text: f"[::ffff:{CLIENT_IP}]:{port} lb " in text, mark, 10.0,
        "the refused connection's line")
    line = parse_connection_line(raw)
    assert line is not None
    assert line.close == "PROXY header required, but the peer is not in trusted_proxies"
    assert line.route == "-"


def test_a_broken_header_from_a_trusted_host_is_refused_with_the_reason(
    gatekeep: Gatekeep,
) -> None:
    mark = gatekeep.mark()
    with connect_from("127.0.0.1", ("127.0.0.1", gatekeep.port("lb"))) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 01 80\r\n" + REQUEST)
        assert sock.recv(100) == b""
    raw = gatekeep.log.wait_for(lambda text: "close=malformed PROXY header" in text, mark)
    line = parse_connection_line(raw)
    assert line is not None and "127.0.0.1]:" in line.client
    assert line.close == ("malformed PROXY header: bad source port "
                          "(decimal 0-65535, no leading zeros)")
