"""
Synapse behind gatekeep's HTTP proxy with TLS terminated: the client API works
(versions, register, login, whoami), Synapse records the client's address from
X-Forwarded-For (and never a forged one), the .well-known answers come from
gatekeep, and /health answers 200.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.certs import Certificate
from tests.integration.clients import curl, require
from tests.integration.configs import TLS_TO_HTTP_SITE
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep
from tests.integration.process import wait_until
from tests.integration.synapse_peer import Synapse, start_synapse

pytestmark = pytest.mark.slow

CLIENT_IP = "127.0.0.5"

CONFIG = TLS_TO_HTTP_SITE + """
[http.site]
health = "/health"
response_timeout = "90s"

[[http.site.route]]
name = "wk-server"
host = ["example.test"]
path = ["/.well-known/matrix/server"]
[http.site.route.respond]
body = '{{"m.server": "matrix.example.test:443"}}'
headers = {{ "Content-Type" = "application/json" }}

[[http.site.route]]
name = "wk-client"
host = ["example.test"]
path = ["/.well-known/matrix/client"]
[http.site.route.respond]
body = '{{"m.homeserver": {{"base_url": "https://matrix.example.test"}}}}'
[http.site.route.respond.headers]
"Content-Type" = "application/json"
"Access-Control-Allow-Origin" = "*"
"Access-Control-Allow-Methods" = "GET, HEAD, OPTIONS"
"Access-Control-Allow-Headers" = "X-Requested-With, Content-Type, Authorization"

[[http.site.route]]
name = "matrix"
host = ["matrix.example.test"]
path = ["/_matrix", "/_synapse/client"]
to = "tcp:127.0.0.1:{synapse}"
max_body = "50MiB"
"""


@pytest.fixture(scope="session")
def synapse(peers_dir: Path) -> Iterator[Synapse]:
    started = start_synapse(peers_dir / "synapse")
    yield started
    started.peer.stop()


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, synapse: Synapse,
             certificate: Certificate) -> Gatekeep:
    require("curl")
    config = CONFIG.format(certs=certificate.directory, synapse=synapse.port)
    return gatekeep_runner(config, ["edge"])


def _call(gatekeep: Gatekeep, certificate: Certificate, host: str, path: str,
          *args: str) -> tuple[int, str]:
    port = gatekeep.port("edge")
    result = curl("--cacert", str(certificate.cert), "--interface", CLIENT_IP,
                  "--resolve", f"{host}:{port}:127.0.0.1", *args, f"https://{host}:{port}{path}",
                  timeout=60)
    return result.status, result.body


def test_client_versions_over_h2(gatekeep: Gatekeep, certificate: Certificate) -> None:
    status, body = _call(gatekeep, certificate, "matrix.example.test",
                         "/_matrix/client/versions", "--http2")
    assert status == 200, body
    assert "v1.1" in json.loads(body)["versions"]


def test_register_login_and_client_address(gatekeep: Gatekeep, certificate: Certificate,
                                           synapse: Synapse) -> None:
    host = "matrix.example.test"
    register = {"username": "bob", "password": "s3cret-pass", "inhibit_login": True}
    status, body = _call(gatekeep, certificate, host, "/_matrix/client/v3/register",
                         "-X", "POST", "-H", "Content-Type: application/json",
                         "--data", json.dumps(register))
    assert status == 401, body  # user-interactive auth: a session and its flows first
    session = json.loads(body)["session"]
    register["auth"] = {"type": "m.login.dummy", "session": session}
    status, body = _call(gatekeep, certificate, host, "/_matrix/client/v3/register",
                         "-X", "POST", "-H", "Content-Type: application/json",
                         "--data", json.dumps(register))
    assert status == 200, body
    assert json.loads(body)["user_id"] == "@bob:example.test"
    login = {"type": "m.login.password", "password": "s3cret-pass",
             "identifier": {"type": "m.id.user", "user": "bob"}}
    status, body = _call(gatekeep, certificate, host, "/_matrix/client/v3/login",
                         "-X", "POST", "--http1.1", "--data", json.dumps(login),
                         "-H", "X-Forwarded-For: 203.0.113.99")
    assert status == 200, body
    token = json.loads(body)["access_token"]
    status, body = _call(gatekeep, certificate, host, "/_matrix/client/v3/account/whoami",
                         "--http2", "-H", f"Authorization: Bearer {token}",
                         "-H", "X-Forwarded-For: 203.0.113.99")
    assert status == 200, body
    assert json.loads(body)["user_id"] == "@bob:example.test"

    # Synapse's access line: "... - {request} - {client address} - {port} - {user} ..."
    def recorded() -> bool:
        return any(f" - {CLIENT_IP} - {synapse.port} - {{@bob:example.test}}" in line
                   and "/account/whoami" in line for line in synapse.log_text().splitlines())

    wait_until(recorded, 10, f"synapse to log whoami from {CLIENT_IP}")
    assert "203.0.113.99" not in synapse.log_text()


def test_well_known_and_health(gatekeep: Gatekeep, certificate: Certificate) -> None:
    status, body = _call(gatekeep, certificate, "example.test", "/.well-known/matrix/server")
    assert (status, json.loads(body)) == (200, {"m.server": "matrix.example.test:443"})
    status, body = _call(gatekeep, certificate, "example.test", "/.well-known/matrix/client",
                         "-i", "-X", "OPTIONS", "-H", "Origin: https://app.element.io",
                         "-H", "Access-Control-Request-Method: GET")
    assert status == 200
    assert "access-control-allow-origin: *" in body.lower()
    assert "access-control-allow-headers: x-requested-with, content-type, authorization" in \
        body.lower()
    status, body = _call(gatekeep, certificate, "matrix.example.test", "/health")
    assert (status, body) == (200, "OK\n")
