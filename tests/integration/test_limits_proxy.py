"""
Per-client limits and access rules behind real load balancers: HAProxy
(``send-proxy-v2``) and nginx ``stream`` (``proxy_protocol on``, v1) connect to
gatekeep from 127.0.0.1 for every client, and gatekeep must count and judge each
client by the address the PROXY header names (127.0.0.x), never the balancer's.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.integration.clients import require
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep
from tests.integration.process import free_port, wait_until
from tests.integration.proxy_peers import connect_from, start_haproxy, start_nginx

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "lb"
endpoint = "tcp:0:interface=127.0.0.1"
service = "echo"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32"]
access = "lab"
max_connections_per_ip = 2
connection_rate_per_ip = "1/m"
connection_burst_per_ip = 6

[service.echo]
[[service.echo.route]]
name = "echo"
forward = {{ to = "tcp:127.0.0.1:{echo}" }}

[access.lab]
deny = ["127.0.0.6/32", "127.0.0.16/32"]
"""

HAPROXY = """
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend front
    bind 127.0.0.1:{port}
    default_backend gatekeep
backend gatekeep
    server gk 127.0.0.1:{gk} send-proxy-v2
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


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, echo: int) -> Gatekeep:
    return gatekeep_runner(CONFIG.format(echo=echo), ["lb"])


@pytest.fixture(scope="module")
def balancers(gatekeep: Gatekeep, tmp_path_factory: pytest.TempPathFactory,
              ) -> Iterator[dict[str, int]]:
    require("haproxy")
    require("nginx")
    ports = {"haproxy": free_port(), "nginx": free_port()}
    haproxy = start_haproxy(tmp_path_factory.mktemp("haproxy"),
                            HAPROXY.format(port=ports["haproxy"], gk=gatekeep.port("lb")),
                            [("127.0.0.1", ports["haproxy"])])
    nginx = start_nginx(tmp_path_factory.mktemp("nginx"),
                        NGINX.format(port=ports["nginx"], gk=gatekeep.port("lb")),
                        [ports["nginx"]])
    yield ports
    haproxy.stop()
    nginx.stop()


def connect(source: str, port: int) -> socket.socket:
    return connect_from(source, ("127.0.0.1", port))


def served(sock: socket.socket) -> bool:
    """Whether an echo comes back through the balancer and gatekeep."""
    try:
        sock.sendall(b"ping\n")
        reply = b""
        while len(reply) < 5:
            chunk = sock.recv(64)
            if not chunk:
                return False
            reply += chunk
    except ConnectionError:
        return False
    assert reply == b"ping\n"
    return True


# Each balancer's clients use their own addresses, so the tests do not share budgets.
CLIENTS = {"haproxy": ("127.0.0.5", "127.0.0.7", "127.0.0.6", "127.0.0.8"),
           "nginx": ("127.0.0.15", "127.0.0.17", "127.0.0.16", "127.0.0.18")}


@pytest.mark.parametrize("balancer", ["haproxy", "nginx"])
def test_limits_count_the_proxy_client(gatekeep: Gatekeep, balancers: dict[str, int],
                                       balancer: str) -> None:
    port = balancers[balancer]
    alice, bob, denied, hasty = CLIENTS[balancer]
    mark = gatekeep.mark()
    first, second = connect(alice, port), connect(alice, port)
    assert served(first) and served(second)
    with connect(alice, port) as third:
        assert not served(third)  # alice has her two
    with connect(bob, port) as other:
        assert served(other)  # same balancer address, another client
    first.close()
    second.close()

    def alice_again() -> bool:
        with connect(alice, port) as again:
            return served(again)

    wait_until(alice_again, 10, "gatekeep to count alice's closes")
    with connect(denied, port) as sock:
        assert not served(sock)
    # connection_rate_per_ip: a burst of 6, then one a minute.
    results = []
    for _ in range(7):
        with connect(hasty, port) as sock:
            results.append(served(sock))
    assert results == [True] * 6 + [False]
    log = gatekeep.log.text(mark)
    assert f"max_connections_per_ip (2) reached for {alice}" in log
    assert f"refused {denied}:" in log and "access rule lab denies it" in log
    assert f"connection_rate_per_ip (0.0166667/s) exceeded by {hasty}" in log
    # Nothing was ever counted against the balancer itself.
    assert "for 127.0.0.1 " not in log and "by 127.0.0.1 " not in log

