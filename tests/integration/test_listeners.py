"""
Scenario 9: listeners of several kinds in one config (tcp, tcp6 and unix) all feed
the same service, and a connection through each is detected and routed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.clients import curl
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, Web
from tests.integration.process import ipv6_loopback

pytestmark = pytest.mark.slow

LISTENER = """
[[listener]]
name = "{name}"
endpoint = '{endpoint}'
service = "edge"
"""

SERVICE = """
[service.edge]
default = "refuse"

[[service.edge.route]]
name = "web"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{http}" }}

[[service.edge.route]]
name = "refuse"
reject = {{}}
"""

HAS_V6 = ipv6_loopback()


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("unix") / "gk.sock"


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, web: Web, socket_path: Path) -> Gatekeep:
    endpoints = {"v4": "tcp:0:interface=127.0.0.1", "unix": f"unix:{socket_path}"}
    if HAS_V6:
        endpoints["v6"] = r"tcp6:0:interface=\:\:1"
    config = "".join(LISTENER.format(name=n, endpoint=e) for n, e in endpoints.items())
    return gatekeep_runner(config + SERVICE.format(http=web.http_port), list(endpoints))


def test_tcp(gatekeep: Gatekeep, web: Web) -> None:
    mark = gatekeep.mark()
    result = curl("-H", "Host: v4.example.test", f"http://127.0.0.1:{gatekeep.port('v4')}/")
    assert result.status == 200, result
    assert result.body.startswith("backend=web-http host=v4.example.test "), result.body
    line = gatekeep.connection(mark, client=result.client)
    assert (line.listener, line.protocol, line.route) == ("v4", "http", "web")


@pytest.mark.skipif(not HAS_V6, reason="no IPv6 loopback here")
def test_tcp6(gatekeep: Gatekeep) -> None:
    assert gatekeep.address("v6").startswith("[::1]:")
    mark = gatekeep.mark()
    result = curl("-g", "-H", "Host: v6.example.test", f"http://[::1]:{gatekeep.port('v6')}/")
    assert result.status == 200, result
    assert result.body.startswith("backend=web-http host=v6.example.test "), result.body
    assert result.client.startswith("[::1]:")
    line = gatekeep.connection(mark, client=result.client)
    assert (line.listener, line.protocol, line.route) == ("v6", "http", "web")


def test_unix(gatekeep: Gatekeep, socket_path: Path) -> None:
    assert gatekeep.address("unix") == f"unix:{socket_path}"
    mark = gatekeep.mark()
    result = curl("--unix-socket", socket_path, "http://unix.example.test/")
    assert result.status == 200, result
    assert result.body.startswith("backend=web-http host=unix.example.test "), result.body
    line = gatekeep.connection(mark, listener="unix")
    assert line.client.startswith("unix:"), line.raw
    assert (line.protocol, line.route) == ("http", "web")
