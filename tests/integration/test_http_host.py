"""
Scenario 4: plain HTTP is routed by its Host header: www.example.test (with or
without a port) to the nginx HTTP backend, *.other.test to a second backend, and
any other host to the default route.
"""

from __future__ import annotations

import pytest

from tests.integration.clients import curl, require, run
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, Web

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
detect_timeout = "5s"

[service.edge]
default = "unknown-host"

[[service.edge.route]]
name = "www"
match.http = {{ host = ["www.example.test", "example.test"] }}
forward = {{ to = "tcp:127.0.0.1:{http}" }}

[[service.edge.route]]
name = "other"
match.http = {{ host = ["*.other.test"] }}
forward = {{ to = "tcp:127.0.0.1:{alt}" }}

[[service.edge.route]]
name = "unknown-host"
respond = {{ data = "{misdirected}" }}
"""

# A TOML basic string: the escapes are TOML's.
MISDIRECTED = ("HTTP/1.1 421 Misdirected Request\\r\\nContent-Type: text/plain\\r\\n"
               "Content-Length: 13\\r\\nConnection: close\\r\\n\\r\\nunknown host\\n")


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, web: Web) -> Gatekeep:
    config = CONFIG.format(http=web.http_port, alt=web.alt_port, misdirected=MISDIRECTED)
    return gatekeep_runner(config, ["edge"])


def test_host_header_routes_to_the_web_backend(gatekeep: Gatekeep, web: Web) -> None:
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    result = curl("-H", "Host: www.example.test", f"http://127.0.0.1:{port}/a/b?c=d")
    assert result.status == 200, result
    assert result.body == (
        "backend=web-http host=www.example.test remote=127.0.0.1 uri=/a/b?c=d "
        "proto=HTTP/1.1\n")
    line = gatekeep.connection(mark, client=result.client)
    assert (line.protocol, line.route) == ("http", "www")
    assert line.facts["host"] == "www.example.test"
    assert line.backend == f"tcp:127.0.0.1:{web.http_port}"


def test_host_with_port_from_resolve(gatekeep: Gatekeep) -> None:
    # curl sends "Host: example.test:PORT"; a pattern without a port fits any port.
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    result = curl("--resolve", f"example.test:{port}:127.0.0.1", f"http://example.test:{port}/")
    assert result.status == 200, result
    assert result.body.startswith("backend=web-http host=example.test "), result.body
    line = gatekeep.connection(mark, client=result.client)
    assert line.route == "www"


def test_another_host_goes_to_another_backend(gatekeep: Gatekeep, web: Web) -> None:
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    result = curl("-H", "Host: api.other.test", f"http://127.0.0.1:{port}/")
    assert result.status == 200, result
    assert result.body.startswith("backend=web-alt host=api.other.test "), result.body
    line = gatekeep.connection(mark, client=result.client)
    assert (line.protocol, line.route) == ("http", "other")
    assert line.facts["host"] == "api.other.test"
    assert line.backend == f"tcp:127.0.0.1:{web.alt_port}"


def test_unknown_host_takes_the_default_route(gatekeep: Gatekeep) -> None:
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    # The bare parent of a wildcard is not covered by it.
    result = curl("-H", "Host: other.test", f"http://127.0.0.1:{port}/")
    assert result.status == 421, result
    assert result.body.startswith("unknown host"), result.body
    line = gatekeep.connection(mark, client=result.client)
    assert line.route == "unknown-host"
    assert line.facts["host"] == "other.test"


def test_client_that_half_closes_after_its_request(gatekeep: Gatekeep) -> None:
    # socat sends the request and then EOF at once (before gatekeep has even reached
    # the backend): the request must still arrive whole and the answer come back.
    require("socat")
    mark = gatekeep.mark()
    result = run(["socat", "-t", "5", "-", f"TCP:127.0.0.1:{gatekeep.port('edge')}"],
                 stdin=b"GET /half HTTP/1.0\r\nHost: www.example.test\r\n\r\n", timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 200 OK\r\n"), result.stdout
    assert result.stdout.endswith(
        "backend=web-http host=www.example.test remote=127.0.0.1 uri=/half proto=HTTP/1.0\n")
    assert result.elapsed < 3
    line = gatekeep.connection(mark, route="www")
    assert line.facts["path"] == "/half"
    assert line.close == "done"
