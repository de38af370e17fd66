"""
gatekeep's onion listener through a private Tor network (tests/integration/tornet.py):
clients reach nginx and Prosody over the .onion address through the same routes as
over a TCP listener, each Tor circuit is its own client in the log, the address
survives a restart, client authorization locks out clients without the key, and a
running tor (reached through its control port) serves as well as a launched one.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.integration.certs import DOMAIN, Certificate
from tests.integration.clients import CurlResult, curl, require, xmpp_login
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import XMPP_PASSWORD, Gatekeep, Prosody, Web
from tests.integration.process import Peer, free_port, wait_until
from tests.integration.tornet import Tornet

pytestmark = pytest.mark.slow

SERVICE = """
[service.edge]
default = "refuse"

[[service.edge.route]]
name = "xmpp"
match.xmpp = {{ to = ["example.test"] }}
forward = {{ to = "tcp:127.0.0.1:{c2s}" }}

[[service.edge.route]]
name = "web"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{http}" }}

[[service.edge.route]]
name = "refuse"
reject = {{}}
"""

LISTENERS = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[[listener]]
name = "onion"
service = "edge"
[listener.tor]
ports = [80, 5222]
key_dir = "{key_dir}"
{tor}
"""

#: tor's PROXY line names the circuit: fc00:dead:beef:4dad::/64 plus its 32-bit id.
ONION_CLIENT = re.compile(r"^\[fc00:dead:beef:4dad::(?:[0-9a-f]{1,4}:)?[0-9a-f]{1,4}\]:\d+$")


def config(tmp: Path, tornet: Tornet, prosody: Prosody, web: Web, tor: str = "") -> str:
    tor = tor or f'tor_binary = "{tornet.join_binary}"'
    return (LISTENERS.format(key_dir=tmp / "onion", tor=tor)
            + SERVICE.format(c2s=prosody.c2s_port, http=web.http_port))


def onion_address(gatekeep: Gatekeep) -> str:
    found = re.match(r"(\S+\.onion):80,5222$", gatekeep.address("onion"))
    assert found is not None, gatekeep.address("onion")
    return found.group(1)


def through_tor(tornet: Tornet, url: str, *args: str, user: str = "gatekeep-test",
                timeout: float = 30) -> CurlResult:
    """curl through the network's SOCKS port; each ``user`` gets circuits of its own."""
    return curl("--proxy", f"socks5h://{user}:x@127.0.0.1:{tornet.socks_port}", *args, url,
                timeout=timeout)


def fetch_until_ok(tornet: Tornet, url: str, *args: str, user: str = "gatekeep-test",
                   timeout: float = 60.0, gatekeep: Gatekeep | None = None) -> CurlResult:
    """
    Retry: "published" means one descriptor reached the HSDirs, maybe the one for the
    next time period; the current one follows a second or so later. On failure, say
    what the tor that ``gatekeep`` launched warned about meanwhile (gatekeep logs it).
    """
    results: list[CurlResult] = []
    mark = gatekeep.mark() if gatekeep is not None else 0

    def ok() -> bool:
        results.append(through_tor(tornet, url, *args, user=user))
        return results[-1].status == 200

    def output() -> str:
        said = "\n".join(map(str, results))
        if gatekeep is not None:
            warnings = [line for line in gatekeep.log.text(mark).splitlines()
                        if "#warn] listener onion: tor: " in line]
            said += "\n--- tor's warnings meanwhile ---\n" + ("\n".join(warnings) or "none")
        return said

    wait_until(ok, timeout, f"a 200 from {url}", output=output)
    return results[-1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onion-network")


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, workdir: Path, tornet: Tornet,
             prosody: Prosody, web: Web) -> Gatekeep:
    # Both listeners announce themselves: the onion one once tor has published it.
    return gatekeep_runner(config(workdir, tornet, prosody, web), ["edge", "onion"])


def test_web_over_the_onion_takes_the_tcp_listeners_route(
    gatekeep: Gatekeep, tornet: Tornet,
) -> None:
    onion = onion_address(gatekeep)
    mark = gatekeep.mark()
    result = fetch_until_ok(tornet, f"http://{onion}/", "-H", "Host: www.example.test",
                            gatekeep=gatekeep)
    assert result.body.startswith("backend=web-http host=www.example.test "), result.body
    line = gatekeep.connection(mark, listener="onion", route="web")
    assert line.protocol == "http" and line.facts["host"] == "www.example.test", line.raw
    assert ONION_CLIENT.match(line.client), line.raw
    assert line.facts["proxy_via"].startswith("127.0.0.1:"), line.raw  # tor, over loopback
    mark = gatekeep.mark()
    direct = curl("-H", "Host: www.example.test", f"http://127.0.0.1:{gatekeep.port('edge')}/")
    assert direct.body.startswith("backend=web-http host=www.example.test "), direct.body
    tcp_line = gatekeep.connection(mark, listener="edge")
    assert (tcp_line.route, tcp_line.protocol) == (line.route, line.protocol)
    # tor's PROXY line was consumed, not forwarded: nginx answered the same bytes.
    assert tcp_line.bytes_out == line.bytes_out, (tcp_line.raw, line.raw)


def test_each_circuit_is_its_own_client(gatekeep: Gatekeep, tornet: Tornet) -> None:
    onion = onion_address(gatekeep)
    fetch_until_ok(tornet, f"http://{onion}/", gatekeep=gatekeep)  # published and reachable
    clients = []
    for user in ("alice", "bob"):  # tor isolates streams by SOCKS credentials
        mark = gatekeep.mark()
        result = fetch_until_ok(tornet, f"http://{onion}/", user=user, gatekeep=gatekeep)
        assert result.body.startswith("backend=web-http "), result.body
        clients.append(gatekeep.connection(mark, listener="onion", route="web").client)
    assert clients[0] != clients[1], clients
    for client in clients:
        assert ONION_CLIENT.match(client), client
        # Tor puts the circuit id in the address and its low 16 bits in the port.
        address, _, port = client[1:].partition("]:")
        tail = address.removeprefix("fc00:dead:beef:4dad::").split(":")
        circuit = int(tail[-1], 16) | (int(tail[0], 16) << 16 if len(tail) == 2 else 0)
        assert int(port) == circuit & 0xFFFF, client


@pytest.fixture(scope="module")
def socks_bridge(tornet: Tornet, gatekeep: Gatekeep,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A local port that socat connects through tor's SOCKS port to the onion's 5222."""
    require("socat")
    port = free_port()
    root = tmp_path_factory.mktemp("socks-bridge")
    peer = Peer("socat", ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                          f"SOCKS4A:127.0.0.1:{onion_address(gatekeep)}:5222,"
                          f"socksport={tornet.socks_port}"], root / "socat.log", cwd=root)
    try:
        peer.wait_port("127.0.0.1", port)
        yield port
    finally:
        peer.stop()


def test_xmpp_login_over_the_onion(
    gatekeep: Gatekeep, tornet: Tornet, prosody: Prosody, certificate: Certificate,
    socks_bridge: int,
) -> None:
    fetch_until_ok(tornet, f"http://{onion_address(gatekeep)}/",  # published and reachable
                   gatekeep=gatekeep)
    mark = gatekeep.mark()
    result = xmpp_login(socks_bridge, prosody.jid, XMPP_PASSWORD, certificate.cert,
                        direct_tls=False, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK jid={prosody.jid}/"), result.stdout
    assert re.search(r" tls=TLSv1\.[23] ", result.stdout), result.stdout  # STARTTLS, end to end
    line = gatekeep.connection(mark, listener="onion", route="xmpp", timeout=30)
    assert (line.protocol, line.facts["to"]) == ("xmpp", DOMAIN), line.raw
    assert line.backend == f"tcp:127.0.0.1:{prosody.c2s_port}"
    assert ONION_CLIENT.match(line.client), line.raw


def test_same_address_after_a_restart(
    gatekeep: Gatekeep, gatekeep_runner: GatekeepRunner, workdir: Path, tornet: Tornet,
    prosody: Prosody, web: Web,
) -> None:
    onion = onion_address(gatekeep)
    gatekeep.stop()  # one publisher per key at a time
    again = gatekeep_runner(config(workdir, tornet, prosody, web), ["edge", "onion"])
    assert onion_address(again) == onion
    result = fetch_until_ok(tornet, f"http://{onion}/", user="after-restart", gatekeep=again)
    assert result.body.startswith("backend=web-http "), result.body


def test_client_authorization(
    gatekeep_runner: GatekeepRunner, tornet: Tornet, prosody: Prosody, web: Web,
    tmp_path: Path,
) -> None:
    key = X25519PrivateKey.generate()
    public = base64.b32encode(key.public_key().public_bytes_raw()).decode().rstrip("=")
    tor = f'tor_binary = "{tornet.join_binary}"\nclient_auth = ["descriptor:x25519:{public}"]'
    private = gatekeep_runner(config(tmp_path, tornet, prosody, web, tor), ["edge", "onion"])
    onion = onion_address(private)
    # Without the key, tor cannot even read the descriptor: the SOCKS request fails.
    denied = through_tor(tornet, f"http://{onion}/", user="no-key")
    assert denied.status == 0 and denied.returncode == 97, denied
    control = tornet.client()
    try:
        secret = base64.b64encode(key.private_bytes_raw()).decode()
        control.command(f"ONION_CLIENT_AUTH_ADD {onion.removesuffix('.onion')} "
                        f"x25519:{secret}")
        result = fetch_until_ok(tornet, f"http://{onion}/", user="with-key", gatekeep=private)
        assert result.body.startswith("backend=web-http "), result.body
    finally:
        control.command(f"ONION_CLIENT_AUTH_REMOVE {onion.removesuffix('.onion')}")
        control.close()


def test_a_running_tor_publishes_too(
    gatekeep_runner: GatekeepRunner, tornet: Tornet, prosody: Prosody, web: Web,
    tmp_path: Path,
) -> None:
    tor = (f'control = "tcp:127.0.0.1:{tornet.control_port}"\n'
           f'control_password = "{tornet.password}"')
    running = gatekeep_runner(config(tmp_path, tornet, prosody, web, tor), ["edge", "onion"])
    onion = onion_address(running)
    mark = running.mark()
    result = fetch_until_ok(tornet, f"http://{onion}/", user="running-tor")
    assert result.body.startswith("backend=web-http "), result.body
    line = running.connection(mark, listener="onion", route="web")
    assert ONION_CLIENT.match(line.client), line.raw
    running.stop()
    control = tornet.client()
    try:
        assert not any(str(tmp_path) in line for line in control.getconf("HiddenServiceOptions"))
    finally:
        control.close()


def test_every_relay_stays_fast_and_stable(tornet: Tornet) -> None:
    """
    The onion listener's port 5222 is one of tor's LongLivedPorts, so tor builds that
    service's rendezvous circuits through Fast and Stable middle relays only (tornet.py
    says why the network's authorities vote every relay Fast and Stable). Without that
    vote, a relay or two lacked one of the flags in many consensuses, and
    test_same_address_after_a_restart failed in about 1 run of 15: tor found no such
    middle hops besides its guard and the client's rendezvous point, gave up on the
    introduction, and the client waited on that rendezvous circuit. Checked last, when
    the network is oldest.
    """
    control = tornet.client()
    try:
        status = control.getinfo("ns/all")
    finally:
        control.close()
    flags: dict[str, list[str]] = {}
    name = ""
    for line in status.splitlines():
        if line.startswith("r "):
            name = line.split()[1]
        elif line.startswith("s "):
            flags[name] = line.split()[1:]
    assert len(flags) == len(tornet.nodes) - 1, flags  # every node but the client
    assert all({"Fast", "Stable"} <= set(node) for node in flags.values()), flags
