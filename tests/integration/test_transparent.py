"""
``forward = { ..., transparent = true }`` for real, inside network namespaces this
test creates (and deletes): nothing touches the host's own addresses or routes.

    client ns                gateway ns (gatekeep)               backend ns
    10.201.1.2 --veth-- 10.201.1.1 | 10.201.2.1 --veth-- 10.201.2.2:8080
    fd00:201:1::2       fd00:201:1::1 | fd00:201:2::1      fd00:201:2::2

The backend routes everything back through the gateway. On the gateway, policy
routing hands the backend's replies to local sockets (the recipe in
docs/recipes/transparent.md): without it they would be sent on to the client,
which never opened that connection.

The backend answers each connection with the address it came from: the client's
own with ``transparent = true``, the gateway's without it, and the address a
trusted PROXY header announced when there is one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import attrs
import pytest

from tests.integration.peers import Gatekeep, twistd
from tests.integration.process import Peer, PeerError

pytestmark = pytest.mark.slow

BACKEND = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.socket(family, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], 8080))
server.listen(16)
print("listening", flush=True)
while True:
    conn, peer = server.accept()
    conn.recv(100)  # the client's line first: closing with unread data would reset
    conn.sendall(f"seen-from={peer[0]}\\n".encode())
    conn.close()
"""

CLIENT = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
    conn.sendall(bytes.fromhex(sys.argv[3]))
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
print(data.decode().strip())
"""

CONFIG = """
[[listener]]
name = "transparent"
endpoint = "tcp6:7001:interface=\\\\:\\\\:"
service = "transparent"

[[listener]]
name = "plain"
endpoint = "tcp6:7002:interface=\\\\:\\\\:"
service = "plain"

[[listener]]
name = "behind-lb"
endpoint = "tcp:7003:interface=10.201.1.1"
service = "transparent"
proxy_protocol = "required"
trusted_proxies = ["10.201.1.2/32"]

[[listener]]
name = "transparent6"
endpoint = "tcp6:7004:interface=fd00\\\\:201\\\\:1\\\\:\\\\:1"
service = "transparent6"

[service.transparent]
[[service.transparent.route]]
name = "backend"
connect_timeout = "2s"
forward = {{ to = "tcp:10.201.2.2:8080", transparent = true }}

[service.plain]
[[service.plain.route]]
name = "backend"
forward = {{ to = "tcp:10.201.2.2:8080" }}

[service.transparent6]
[[service.transparent6.route]]
name = "backend"
forward = {{ to = "tcp:host=fd00\\\\:201\\\\:2\\\\:\\\\:2:port=8080", transparent = true }}
"""

# The routing a transparent gateway needs (see docs/recipes/transparent.md): replies
# from the backend's port come back to a local socket, whatever their destination.
GATEWAY_RULES = [
    "ip rule add from 10.201.2.2 iif gk-gw1 ipproto tcp sport 8080 lookup 201",
    "ip route add local 0.0.0.0/0 dev lo table 201",
    "ip -6 rule add from fd00:201:2::2 iif gk-gw1 ipproto tcp sport 8080 lookup 201",
    "ip -6 route add local ::/0 dev lo table 201",
]


@attrs.frozen
class Namespaces:
    client: str
    gateway: str
    backend: str

    def run(self, namespace: str, command: str) -> None:
        subprocess.run(["ip", "netns", "exec", namespace, *command.split()], check=True,
                       capture_output=True, timeout=10)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[Namespaces]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("network namespaces need root and iproute2 (CI has both)")
        pytest.skip("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    ns = Namespaces(f"gk-cl-{tag}", f"gk-gw-{tag}", f"gk-be-{tag}")
    created: list[str] = []
    try:
        for name in (ns.client, ns.gateway, ns.backend):
            _ip("netns", "add", name)
            created.append(name)
            ns.run(name, "ip link set lo up")
        # Interface names live inside each namespace, so fixed names cannot clash.
        _ip("link", "add", "gk-cl0", "netns", ns.client, "type", "veth",
            "peer", "name", "gk-gw0", "netns", ns.gateway)
        _ip("link", "add", "gk-gw1", "netns", ns.gateway, "type", "veth",
            "peer", "name", "gk-be0", "netns", ns.backend)
        for name, link, v4, v6 in ((ns.client, "gk-cl0", "10.201.1.2/24", "fd00:201:1::2/64"),
                                   (ns.gateway, "gk-gw0", "10.201.1.1/24", "fd00:201:1::1/64"),
                                   (ns.gateway, "gk-gw1", "10.201.2.1/24", "fd00:201:2::1/64"),
                                   (ns.backend, "gk-be0", "10.201.2.2/24", "fd00:201:2::2/64")):
            ns.run(name, f"ip addr add {v4} dev {link}")
            ns.run(name, f"ip -6 addr add {v6} dev {link} nodad")
            ns.run(name, f"ip link set {link} up")
        ns.run(ns.client, "ip route add default via 10.201.1.1")
        ns.run(ns.client, "ip -6 route add default via fd00:201:1::1")
        ns.run(ns.backend, "ip route add default via 10.201.2.1")
        ns.run(ns.backend, "ip -6 route add default via fd00:201:2::1")
        for rule in GATEWAY_RULES:
            ns.run(ns.gateway, rule)
        yield ns
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10,
                           check=False)


@pytest.fixture(scope="module")
def backend(namespaces: Namespaces, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    root = tmp_path_factory.mktemp("transparent-backend")
    peers = [Peer(f"backend-{family}", ["ip", "netns", "exec", namespaces.backend,
                                        sys.executable, "-c", BACKEND, address],
                  root / f"backend-{family}.log", cwd=root)
             for family, address in (("v4", "10.201.2.2"), ("v6", "fd00:201:2::2"))]
    try:
        for peer in peers:
            peer.wait_output("^listening$")
        yield
    finally:
        for peer in peers:
            peer.stop()


@pytest.fixture(scope="module")
def gatekeep(
    namespaces: Namespaces, backend: None, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gatekeep]:
    workdir = tmp_path_factory.mktemp("transparent-gatekeep")
    config = workdir / "gatekeep.toml"
    config.write_text(CONFIG.format())
    started = Gatekeep(["ip", "netns", "exec", namespaces.gateway, twistd(), "-n", "--pidfile=",
                        "gatekeep", "--config", config], workdir,
                       ["transparent", "plain", "behind-lb", "transparent6"])
    yield started
    started.stop()
    assert not started.problems(), started.problems()


def ask(namespaces: Namespaces, host: str, port: int, data: bytes = b"hello\n") -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", namespaces.client, sys.executable, "-c", CLIENT, host,
         str(port), data.hex()], capture_output=True, timeout=20, check=False, text=True)
    if result.returncode != 0:
        raise PeerError(f"client failed: {result.stderr}")
    return result.stdout.strip()


def test_transparent_backend_sees_the_client(namespaces: Namespaces, gatekeep: Gatekeep) -> None:
    mark = gatekeep.mark()
    assert ask(namespaces, "10.201.1.1", 7001) == "seen-from=10.201.1.2"
    line = gatekeep.connection(mark, listener="transparent")
    assert line.client.startswith("[::ffff:10.201.1.2]:")
    assert line.close in ("done", "backend closed"), line.raw


def test_without_transparent_the_backend_sees_the_gateway(
    namespaces: Namespaces, gatekeep: Gatekeep,
) -> None:
    assert ask(namespaces, "10.201.1.1", 7002) == "seen-from=10.201.2.1"


def test_transparent_from_a_proxy_headers_address(
    namespaces: Namespaces, gatekeep: Gatekeep,
) -> None:
    # A trusted balancer (the client host here) announces 10.201.1.77: the backend
    # connection comes from that address, which is the client everywhere.
    header = b"PROXY TCP4 10.201.1.77 10.201.1.1 4444 7003\r\n"
    assert ask(namespaces, "10.201.1.1", 7003, header + b"hello\n") == "seen-from=10.201.1.77"


def test_transparent_over_ipv6(namespaces: Namespaces, gatekeep: Gatekeep) -> None:
    assert ask(namespaces, "fd00:201:1::1", 7004) == "seen-from=fd00:201:1::2"


def test_routing_rules_are_what_makes_it_work(
    namespaces: Namespaces, gatekeep: Gatekeep,
) -> None:
    # Without the rule, the backend's SYN-ACK goes on towards the client: no connection,
    # and gatekeep says so within its connect_timeout instead of hanging.
    namespaces.run(namespaces.gateway, GATEWAY_RULES[0].replace(" add ", " del ", 1))
    try:
        mark = gatekeep.mark()
        assert ask(namespaces, "10.201.1.1", 7001) == ""
        line = gatekeep.connection(mark, listener="transparent", timeout=20.0)
        assert line.close == "backend connect timeout", line.raw
    finally:
        namespaces.run(namespaces.gateway, GATEWAY_RULES[0])
    assert ask(namespaces, "10.201.1.1", 7001) == "seen-from=10.201.1.2"

