"""
``forward`` to ``tor:`` endpoints through a private Tor network (tests/integration/
tornet.py): to a clear-web backend on 127.0.0.1 through an exit relay, and to an onion
service that the test publishes on the network's client tor. A backend tor cannot
reach is a 502 with tor's reason in the connection's log line.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.clients import curl
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, Web
from tests.integration.process import wait_until
from tests.integration.tornet import Tornet

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[service.edge]
default = "refuse"

[[service.edge.route]]
name = "exit"
match.http = {{ host = ["exit.example.test"] }}
forward = {{ to = "tor:127.0.0.1:{http}:socksHostname=127.0.0.1:socksPort={socks}" }}

[[service.edge.route]]
name = "onion"
match.http = {{ host = ["onion.example.test"] }}
forward = {{ to = "tor:host={onion}:port=80:socksHostname=127.0.0.1:socksPort={socks}" }}

[[service.edge.route]]
name = "nowhere"
match.http = {{ host = ["nowhere.example.test"] }}
forward = {{ to = "tor:{nowhere}:80:socksHostname=127.0.0.1:socksPort={socks}" }}

[[service.edge.route]]
name = "refuse"
reject = {{}}
"""


@pytest.fixture(scope="module")
def onion(tornet: Tornet, web: Web) -> Iterator[str]:
    """An onion service on the network's client tor, in front of nginx; removed after."""
    control = tornet.client()
    try:
        reply = control.command(f"ADD_ONION NEW:ED25519-V3 Flags=DiscardPK "
                                f"Port=80,127.0.0.1:{web.http_port}")
        service_id = next(line.split("=", 1)[1] for line in reply
                          if line.startswith("ServiceID="))
        yield f"{service_id}.onion"
    finally:
        control.close()  # without Flags=Detach the service goes with the connection


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, tornet: Tornet, web: Web, onion: str) -> Gatekeep:
    config = CONFIG.format(http=web.http_port, socks=tornet.socks_port, onion=onion,
                           nowhere=unpublished_onion())
    return gatekeep_runner(config, ["edge"])


def unpublished_onion() -> str:
    """A valid v3 address (rend-spec-v3 6: key, checksum, version) nobody publishes."""
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()  # tor checks the point
    checksum = hashlib.sha3_256(b".onion checksum" + key + b"\x03").digest()[:2]
    return base64.b32encode(key + checksum + b"\x03").decode().lower() + ".onion"


def fetch_until_ok(gatekeep: Gatekeep, host: str, timeout: float = 60.0) -> str:
    """
    GET through gatekeep until a 200: a new onion is reachable a second or so after its
    first descriptor upload, and the first circuits of a new network take a moment.
    """
    bodies: list[str] = []

    def ok() -> bool:
        result = curl("-H", f"Host: {host}", f"http://127.0.0.1:{gatekeep.port('edge')}/",
                      timeout=30)
        bodies.append(f"{result.status} {result.body[:200]}")
        return result.status == 200

    wait_until(ok, timeout, f"a 200 for {host}", output=lambda: "\n".join(bodies))
    return bodies[-1]


def test_clear_web_backend_through_an_exit(
    gatekeep: Gatekeep, web: Web, tornet: Tornet,
) -> None:
    watcher = tornet.client()
    try:
        watcher.command("SETEVENTS STREAM")
        mark = gatekeep.mark()
        body = fetch_until_ok(gatekeep, "exit.example.test")
        watcher.command("GETINFO version")  # every event before this reply has arrived
    finally:
        watcher.close()
    assert body.startswith("200 backend=web-http host=exit.example.test "), body
    line = gatekeep.connection(mark, route="exit", close="backend closed")
    assert line.backend.startswith(f"tor:127.0.0.1:{web.http_port}:"), line.raw
    # The stream went through the network's tor, to the backend through an exit relay
    # (tor names the target ADDRESS.FINGERPRINT.exit once it knows the exit).
    through_exit = re.compile(rf"STREAM \d+ SUCCEEDED \d+ 127\.0\.0\.1\.[0-9A-F]{{40}}\.exit:"
                              rf"{web.http_port} ")
    assert any(through_exit.match(e) for e in watcher.events), "\n".join(watcher.events)


def test_onion_backend(gatekeep: Gatekeep, onion: str) -> None:
    mark = gatekeep.mark()
    body = fetch_until_ok(gatekeep, "onion.example.test")
    assert body.startswith("200 backend=web-http host=onion.example.test "), body
    line = gatekeep.connection(mark, route="onion", close="backend closed")
    assert f"host={onion}:port=80" in line.backend, line.raw


def test_unreachable_onion_is_a_502(gatekeep: Gatekeep) -> None:
    mark = gatekeep.mark()
    result = curl("-H", "Host: nowhere.example.test",
                  f"http://127.0.0.1:{gatekeep.port('edge')}/", timeout=40)
    assert result.status == 502, result
    line = gatekeep.connection(mark, route="nowhere", timeout=30)
    # After asking every HSDir for the descriptor: tor's SOCKS error is the reason.
    assert line.close.startswith("backend unreachable: "), line.raw
    assert line.time > 0.05, line.raw  # tor really looked (a malformed name fails at once)
