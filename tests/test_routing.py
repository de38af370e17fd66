"""Route selection: names, wildcards, ALPN lists, order, waiting and defaults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.routing import (
    Outcome,
    Selection,
    condition_fits,
    name_matches,
    select_route,
    split_host_port,
    walk_routes,
)
from gatekeep.values import Condition, Match, NeedMore, NoMatch, Route, Service, Verdict
from tests.helpers import RecordingTarget


@pytest.mark.parametrize(
    ("pattern", "name", "fits"),
    [
        ("example.org", "example.org", True),
        ("example.org", "EXAMPLE.org.", True),
        ("Example.Org.", "example.org", True),
        ("example.org", "www.example.org", False),
        ("*.example.org", "www.example.org", True),
        ("*.example.org", "a.b.example.org", True),
        ("*.example.org", "example.org", False),
        ("*.example.org", "badexample.org", False),
        ("*.example.org", ".example.org", False),
    ],
)
def test_name_matches(pattern: str, name: str, fits: bool) -> None:
    assert name_matches(pattern, name) is fits


def test_split_host_port() -> None:
    assert split_host_port("example.org") == ("example.org", None)
    assert split_host_port("example.org:8448") == ("example.org", 8448)
    assert split_host_port("[::1]:443") == ("::1", 443)
    assert split_host_port("[::1]") == ("::1", None)


def test_conditions() -> None:
    alpn = Condition("alpn", ("xmpp-client",))
    assert condition_fits(alpn, {"alpn": ("h2", "xmpp-client")})
    assert not condition_fits(alpn, {"alpn": ("h2", "http/1.1")})
    assert not condition_fits(alpn, {"alpn": ()})
    sni = Condition("sni", ("example.org", "*.example.net"))
    assert condition_fits(sni, {"sni": "chat.example.net"})
    assert not condition_fits(sni, {"sni": None})
    assert not condition_fits(sni, {})
    host = Condition("host", ("fed.example.org:8448", "www.example.org"))
    assert condition_fits(host, {"host": "fed.example.org", "port": 8448})
    assert not condition_fits(host, {"host": "fed.example.org", "port": 443})
    assert not condition_fits(host, {"host": "fed.example.org", "port": None})
    assert condition_fits(host, {"host": "www.example.org", "port": 8080})
    path = Condition("path", ("/_matrix",))
    assert condition_fits(path, {"path": "/_matrix/client/versions"})
    assert not condition_fits(path, {"path": "/_synapse"})
    level = Condition("level", (4, 5))
    assert condition_fits(level, {"level": 5})
    assert not condition_fits(level, {"level": 3})


def _service(default: str | None = "web") -> Service:
    target = RecordingTarget()
    return Service("edge", (
        Route("xmpp-tls", "tls", (Condition("alpn", ("xmpp-client",)),), target),
        Route("xmpp", "xmpp", (), target),
        Route("web", "tls", (Condition("sni", ("example.org",)),), target),
    ), default)


def test_first_match_wins() -> None:
    service = _service()
    tls = Match({"sni": "example.org", "alpn": ("xmpp-client", "h2")})
    chosen = select_route(service, {"tls": tls, "xmpp": NoMatch()}, final=False)
    assert chosen.route is not None and chosen.route.name == "xmpp-tls"


def test_undecided_earlier_route_blocks_later_ones() -> None:
    service = _service()
    tls = Match({"sni": "example.org", "alpn": ("h2",)})
    # xmpp (route 2) is undecided: route 3 must not be taken yet...
    assert select_route(service, {"tls": tls, "xmpp": NeedMore()}, final=False).waiting
    # ...but once no more bytes can come, it counts as no match.
    chosen = select_route(service, {"tls": tls, "xmpp": NeedMore()}, final=True)
    assert chosen.route is not None and chosen.route.name == "web"
    assert not chosen.by_default


def test_default_and_reject() -> None:
    verdicts = {"tls": NoMatch(), "xmpp": NoMatch()}
    chosen = select_route(_service(), verdicts, final=False)
    assert chosen.route is not None and chosen.route.name == "web" and chosen.by_default
    rejected = select_route(_service(default=None), verdicts, final=False)
    assert rejected.route is None and not rejected.waiting


def test_walk_explains_each_route() -> None:
    tls = Match({"sni": "other.org", "alpn": ("h2",)})
    checks = list(walk_routes(_service(), {"tls": tls, "xmpp": NoMatch("nope")}, final=False))
    assert [c.outcome for c in checks] == [Outcome.SKIPPED] * 3
    assert "alpn=('h2',)" in checks[0].why
    assert "nope" in checks[1].why
    assert "sni='other.org'" in checks[2].why


def _from_walk(service: Service, verdicts: dict[str, Verdict], final: bool) -> Selection:
    """What select_route must answer, as walk_routes (what explain shows) explains it."""
    checks = list(walk_routes(service, verdicts, final))
    last = checks[-1] if checks else None
    if last is not None and last.outcome is Outcome.WAITING:
        return Selection(None, True)
    if last is not None and last.outcome is Outcome.TAKEN:
        return Selection(last.route, False, last.match)
    if service.default is None:
        return Selection(None, False)
    return Selection(service.route_named(service.default), False, None, True)


_DETECTORS = ("tls", "xmpp", "http")
_conditions = st.lists(st.sampled_from([
    Condition("sni", ("example.org",)), Condition("sni", ("*.example.net",)),
    Condition("alpn", ("h2", "xmpp-client")), Condition("host", ("example.org:8448",)),
]), max_size=2).map(tuple)
_routes = st.lists(st.tuples(st.sampled_from((*_DETECTORS, None)), _conditions),
                   min_size=1, max_size=5)
_verdict = st.one_of(
    st.just(NeedMore()), st.builds(NoMatch, st.sampled_from(["", "nope"])),
    st.builds(Match, st.fixed_dictionaries({}, optional={
        "sni": st.sampled_from(["example.org", "a.example.net", "other.org"]),
        "alpn": st.sampled_from([(), ("h2",), ("xmpp-client", "h2")]),
        "host": st.sampled_from(["example.org", "www.example.org"]),
        "port": st.sampled_from([443, 8448]),
    })))


@given(_routes, st.dictionaries(st.sampled_from(_DETECTORS), _verdict),
       st.booleans(), st.booleans())
def test_select_route_decides_as_walk_routes_explains(
    routes: list[tuple[str | None, tuple[Condition, ...]]], verdicts: dict[str, Verdict],
    final: bool, with_default: bool,
) -> None:
    target = RecordingTarget()
    service = Service("edge", tuple(
        Route(f"r{n}", detector, conditions if detector is not None else (), target)
        for n, (detector, conditions) in enumerate(routes)),
        "r0" if with_default else None)
    assert select_route(service, verdicts, final) == _from_walk(service, verdicts, final)
