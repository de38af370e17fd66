"""``[http.X]`` tables and the ``http = "X"`` action: errors name the TOML path."""

from __future__ import annotations

import textwrap

import pytest
from zope.interface.verify import verifyObject

from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.interfaces import ITarget
from gatekeep.registry import Registry, load_registry
from gatekeep.targets.http import HTTPTarget

BASE = """
[[listener]]
name = "edge"
endpoint = "tcp:8443"
service = "edge"

[service.edge]
[[service.edge.route]]
name = "web"
http = "{site}"
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def errors(text: str, registry: Registry, site: str = "site") -> list[str]:
    with pytest.raises(ConfigErrors) as raised:
        load_config(BASE.format(site=site) + textwrap.dedent(text), registry)
    return [f"{e.path}: {e.message}" for e in raised.value.errors]


def test_good_site(registry: Registry) -> None:
    config = load_config(BASE.format(site="site") + textwrap.dedent("""
        [http.site]
        health = "/health"
        trusted_proxies = ["10.0.0.0/8"]
        max_body = "2MiB"
        connect_timeout = "1s"
        response_timeout = "90s"
        access_log = "/tmp/access.log"
        [[http.site.route]]
        name = "matrix"
        host = ["matrix.example.org", "*.example.org", "fed.example.org:8448", "[::1]:8448"]
        path = ["/_matrix", "/_synapse/client"]
        to = "tcp:127.0.0.1:8008"
        max_body = "64MiB"
        host_header = "backend.internal"
        [[http.site.route]]
        name = "wk"
        path = ["/.well-known/matrix/client"]
        respond = { status = 200, headers = { "Access-Control-Allow-Origin" = "*" }, body = "{}" }
        """), registry)
    [route] = config.services["edge"].routes
    target = route.target
    assert isinstance(target, HTTPTarget)
    verifyObject(ITarget, target)
    site = target.site
    assert site.max_body == 2 * 1024 * 1024 and site.response_timeout == 90.0
    matrix, wk = site.routes
    assert matrix.host == (("matrix.example.org", None), ("*.example.org", None),
                           ("fed.example.org", 8448), ("::1", 8448))
    assert matrix.max_body == 64 * 1024 * 1024
    assert wk.respond is not None and wk.respond.body == b"{}"
    assert target.describe() == "http site 'site' (2 route(s))"


def test_errors_name_their_paths(registry: Registry) -> None:
    found = errors("""
        [http.site]
        max_body = "lots"
        helth = "/health"
        [[http.site.route]]
        name = "a"
        host = ["bad host!"]
        to = "tcp:127.0.0.1:1"
        [[http.site.route]]
        name = "b"
        to = "tcp:127.0.0.1:1"
        respond = { body = "x" }
        [[http.site.route]]
        name = "c"
        path = ["no-slash"]
        to = "nonsense:x"
        [[http.site.route]]
        name = "d"
        respond = { status = 99, headers = { "Content-Length" = "3" } }
        """, registry)
    text = "\n".join(found)
    assert "http.site.max_body: 'lots' is not a size" in text
    assert "http.site.helth: unknown key 'helth'" in text
    assert "http.site.route[0].host: bad host pattern 'bad host!'" in text
    assert "http.site.route[1]: a route needs exactly one of `to`" in text
    assert "http.site.route[2].path: 'no-slash' is not a path prefix" in text
    assert "http.site.route[2].to:" in text
    assert "http.site.route[3].respond.status:" in text
    assert "http.site.route[3].respond.headers: 'Content-Length' is set by gatekeep" in text


def test_unknown_site_and_catch_all_first(registry: Registry) -> None:
    found = errors("""
        [http.other]
        [[http.other.route]]
        name = "all"
        to = "tcp:127.0.0.1:1"
        [[http.other.route]]
        name = "never"
        path = ["/x"]
        to = "tcp:127.0.0.1:1"
        """, registry, site="missing")
    text = "\n".join(found)
    assert "service.edge.route[0].http: no [http.missing] table" in text
    assert "http.other.route[0]: impossible combination: catch-all route 'all'" in text


def test_action_must_name_a_site(registry: Registry) -> None:
    with pytest.raises(ConfigErrors) as raised:
        load_config(BASE.replace('http = "{site}"', "http = { to = 'x' }"), registry)
    assert "expected the name of an [http.NAME] table" in raised.value.render()


def test_check_prints_the_sites_routes(registry: Registry) -> None:
    from gatekeep.cli import route_table

    config = load_config(BASE.format(site="site") + textwrap.dedent("""
        [http.site]
        health = "/health"
        [[http.site.route]]
        name = "wk"
        host = ["example.org"]
        path = ["/.well-known/matrix/client"]
        respond = { body = "{}" }
        [[http.site.route]]
        name = "matrix"
        host = ["matrix.example.org", "[::1]:8448"]
        path = ["/_matrix"]
        to = "tcp:127.0.0.1:8008"
        max_body = "50MiB"
        """), registry)
    table = route_table(config)
    assert "http sites:\n  http site site (health /health; max_body 1MiB; " in table
    assert "1. wk      host=example.org path=/.well-known/matrix/client" in table
    assert "-> respond 200 (2 bytes)" in table
    assert "host=matrix.example.org,[::1]:8448 path=/_matrix" in table
    assert "-> tcp:127.0.0.1:8008, max_body 50MiB" in table
