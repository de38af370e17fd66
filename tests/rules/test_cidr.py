"""The built-in access rule: deny wins, when-clauses, defaults; and its config."""

from __future__ import annotations

import ipaddress
import textwrap
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.interfaces import IAccessRule
from gatekeep.registry import DETECTORS, RULES, TARGETS, Registry, load_registry
from gatekeep.rules.cidr import CIDRRule, parse_networks
from gatekeep.values import Decision, Match

ALLOW, DENY, ABSTAIN = Decision.ALLOW, Decision.DENY, Decision.ABSTAIN


def v4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 4711)


def v6(host: str) -> IPv6Address:
    return IPv6Address("TCP", host, 4711)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def rule(text: str, registry: Registry) -> IAccessRule:
    config = load_config(textwrap.dedent(BASE) + textwrap.dedent(text), registry)
    found: IAccessRule = config.access["r"]
    return found


BASE = """
[[listener]]
name = "l"
endpoint = "tcp:8443"
service = "s"
access = "r"

[service.s]
[[service.s.route]]
name = "web"
forward = { to = "tcp:127.0.0.1:8080" }
"""


def test_provides_the_interface(registry: Registry) -> None:
    verifyObject(IAccessRule, CIDRRule())
    verifyObject(IAccessRule, rule("[access.r]\n", registry))
    assert "cidr" in registry.rules


def test_deny_wins_over_allow(registry: Registry) -> None:
    r = rule("""
        [access.r]
        allow = ["0.0.0.0/0", "::/0"]
        deny = ["192.0.2.0/24", "2001:db8:bad::/48"]
        default = "deny"
    """, registry)
    assert r.decide(v4("192.0.2.9"), None) is DENY
    assert r.decide(v4("198.51.100.1"), None) is ALLOW
    assert r.decide(v6("2001:db8:bad::1"), None) is DENY
    assert r.decide(v6("2001:db8:900d::1"), None) is ALLOW
    # IPv4-mapped IPv6 (a tcp6 listener's IPv4 clients) counts as IPv4.
    assert r.decide(v6("::ffff:192.0.2.9"), None) is DENY


def test_default_decides_the_rest(registry: Registry) -> None:
    r = rule("""
        [access.r]
        allow = ["10.0.0.0/8"]
        default = "deny"
    """, registry)
    assert r.decide(v4("10.1.2.3"), None) is ALLOW
    assert r.decide(v4("11.1.2.3"), None) is DENY
    # A UNIX-socket client is in no network: only the default applies.
    assert r.decide(UNIXAddress(b"/run/x.sock"), None) is DENY
    assert rule("[access.r]\ndeny = [\"10.0.0.0/8\"]\n", registry).decide(
        v4("11.0.0.1"), None) is ALLOW


def test_when_clause_for_a_name(registry: Registry) -> None:
    """Deny SNI admin.example.org from outside 10.0.0.0/8, allow the rest."""
    r = rule("""
        [access.r]
        deny = ["192.0.2.0/24"]

        [[access.r.when]]
        facts = { sni = ["Admin.Example.org."] }
        allow = ["10.0.0.0/8"]
        default = "deny"
    """, registry)
    admin = Match({"sni": "admin.example.org", "protocol": "tls"})
    other = Match({"sni": "www.example.org", "protocol": "tls"})
    # On accept nothing is known yet: only the deny list decides.
    assert r.decide(v4("203.0.113.5"), None) is ABSTAIN
    assert r.decide(v4("192.0.2.5"), None) is DENY
    assert r.decide(v4("203.0.113.5"), admin) is DENY
    assert r.decide(v4("10.9.9.9"), admin) is ALLOW
    assert r.decide(v4("203.0.113.5"), other) is ALLOW
    assert r.decide(v4("203.0.113.5"), Match({})) is ALLOW
    # The rule's deny list wins over a clause's allow.
    r2 = rule("""
        [access.r]
        deny = ["10.6.0.0/16"]
        [[access.r.when]]
        facts = { sni = ["*.example.org"], protocol = "tls" }
        allow = ["10.0.0.0/8"]
        default = "deny"
    """, registry)
    assert r2.decide(v4("10.6.0.1"), admin) is DENY
    assert r2.decide(v4("10.7.0.1"), admin) is ALLOW
    assert r2.decide(v4("10.7.0.1"), Match({"sni": "example.org", "protocol": "tls"})) is ALLOW
    assert r2.decide(v4("11.7.0.1"), Match({"sni": "a.example.org", "protocol": "xmpp"})) \
        is ALLOW


def test_first_fitting_clause_decides(registry: Registry) -> None:
    r = rule("""
        [access.r]
        default = "deny"
        [[access.r.when]]
        facts = { protocol = "ssh" }
        allow = ["10.0.0.0/8"]
        [[access.r.when]]
        facts = { protocol = ["ssh", "tls"] }
        default = "allow"
    """, registry)
    ssh, tls = Match({"protocol": "ssh"}), Match({"protocol": "tls"})
    assert r.decide(v4("10.0.0.1"), ssh) is ALLOW
    assert r.decide(v4("11.0.0.1"), ssh) is DENY  # the clause inherits default = deny
    assert r.decide(v4("11.0.0.1"), tls) is ALLOW
    assert r.decide(v4("11.0.0.1"), Match({"protocol": "http"})) is DENY


def test_describe_says_the_effective_rule(registry: Registry) -> None:
    r = rule("""
        [access.r]
        deny = ["192.0.2.0/24"]
        [[access.r.when]]
        facts = { sni = ["admin.example.org"] }
        allow = ["10.0.0.0/8"]
        default = "deny"
    """, registry)
    assert r.describe() == ("r: deny 192.0.2.0/24; otherwise allow; when "
                            "sni=admin.example.org: allow 10.0.0.0/8; otherwise deny")


def errors(text: str, registry: Registry) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(textwrap.dedent(BASE) + textwrap.dedent(text), registry)
    return [str(e) for e in caught.value.errors]


def test_config_errors_name_the_path(registry: Registry) -> None:
    [error] = errors("""
        [access.r]
        deny = ["10.0.0.1/8"]
    """, registry)
    assert error.startswith("access.r.deny:") and "did you mean '10.0.0.0/8'" in error
    [error] = errors("""
        [access.r]
        default = "maybe"
    """, registry)
    assert error.startswith("access.r.default:")
    [error] = errors("""
        [access.r]
        alow = []
    """, registry)
    assert "access.r" in error and "did you mean 'allow'" in error
    [error] = errors("""
        [access.r]
        [[access.r.when]]
        allow = ["10.0.0.0/8"]
    """, registry)
    assert error.startswith("access.r.when:") and "facts" in error
    [error] = errors("""
        [access.r]
        kind = "geoip"
    """, registry)
    assert error.startswith("access.r.kind:") and "unknown kind 'geoip'" in error


def test_dangling_rule_names(registry: Registry) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_config(textwrap.dedent("""
            [[listener]]
            name = "l"
            endpoint = "tcp:8443"
            service = "s"
            access = "nope"

            [service.s]
            [[service.s.route]]
            name = "ssh"
            match.ssh = {}
            access = "missing"
            forward = { to = "tcp:127.0.0.1:22" }
        """), registry)
    shown = [str(e) for e in caught.value.errors]
    assert any(e.startswith("listener[0].access: no rule named 'nope'") for e in shown), shown
    assert any(e.startswith("service.s.route[0].access: no rule named 'missing'")
               for e in shown), shown


def test_route_access_is_loaded(registry: Registry) -> None:
    config = load_config(textwrap.dedent("""
        [[listener]]
        name = "l"
        endpoint = "tcp:8443"
        service = "s"

        [service.s]
        [[service.s.route]]
        name = "ssh"
        match.ssh = {}
        access = "inside"
        forward = { to = "tcp:127.0.0.1:22" }

        [access.inside]
        allow = ["10.0.0.0/8"]
        default = "deny"
    """), registry)
    route = config.services["s"].routes[0]
    assert route.access is not None
    assert route.access.decide(v4("10.0.0.1"), Match({})) is ALLOW
    assert route.access.decide(v4("8.8.8.8"), Match({})) is DENY


def test_parse_networks_rejects_junk() -> None:
    with pytest.raises(ValueError, match="not an IPv4/IPv6"):
        parse_networks(["example.org"])
    with pytest.raises(TypeError):
        parse_networks("10.0.0.0/8")


CONFIG = Path(__file__).with_name("access.toml")


def test_check_shows_the_effective_rules(capsys: pytest.CaptureFixture[str]) -> None:
    import gatekeep.cli

    assert gatekeep.cli.main(["check", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    assert ("access world: deny 192.0.2.0/24; otherwise allow; when sni=admin.example.org: "
            "allow 10.0.0.0/8; otherwise deny") in out
    assert ("limits: max_connections 1000, max_connections_per_ip 10, "
            "connection_rate_per_ip 20/s (burst 20), IPv6 per /64") in out
    assert "access inside: allow 10.0.0.0/8, fd00::/8; otherwise deny" in out


def test_explain_decides_for_a_client(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    import gatekeep.cli
    from gatekeep.explain import parse_client

    hello = tmp_path / "get"
    hello.write_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert gatekeep.cli.main(["explain", str(CONFIG), "--listener", "public",
                              "--client", "192.0.2.4", str(hello)]) == 0
    assert "client 192.0.2.4:0: refused on accept by access rule world" in \
        capsys.readouterr().out
    assert gatekeep.cli.main(["explain", str(CONFIG), "--listener", "public",
                              "--client", "[2001:db8::1]:5", str(hello)]) == 0
    assert "client [2001:db8::1]:5: allowed" in capsys.readouterr().out
    with pytest.raises(ValueError):
        parse_client("example.org")


# A third-party rule kind, found through the gatekeep.rules entry point.


@implementer(IAccessRule)
class EvenPorts:
    """Lets in clients whose source port is even (a test of the plugin wiring)."""

    def __init__(self, parity: int = 0) -> None:
        self.parity = parity

    def decide(self, peer: Any, match: Match | None) -> Decision:
        return ALLOW if peer.port % 2 == self.parity else DENY

    def describe(self) -> str:
        return f"source port parity {self.parity}"


class NotARule:
    def decide(self, peer: Any, match: Match | None) -> Decision:
        return ALLOW


def test_rule_plugins_are_found_by_entry_point() -> None:
    eps = [EntryPoint("even", "tests.rules.test_cidr:EvenPorts", RULES),
           EntryPoint("broken", "tests.rules.test_cidr:NotARule", RULES),
           *entry_points(group=DETECTORS), *entry_points(group=TARGETS)]
    registry = load_registry(eps)
    assert registry.rules["even"].__name__ == "EvenPorts"
    [problem] = registry.problems
    assert (problem.group, problem.name) == (RULES, "broken")
    r = rule('[access.r]\nkind = "even"\nparity = 1\n', registry)
    assert r.decide(v4("10.0.0.1"), None) is ALLOW  # port 4711
    assert r.decide(IPv4Address("TCP", "10.0.0.1", 4712), None) is DENY
    assert r.describe() == "r: source port parity 1"
    with pytest.raises(ConfigErrors) as caught:
        rule('[access.r]\nkind = "broken"\n', registry)
    assert "access.r.kind: plugin 'broken' (gatekeep.rules)" in str(caught.value.errors[0])
    with pytest.raises(ConfigErrors) as caught:
        rule('[access.r]\nkind = "even"\ncolour = "red"\n', registry)
    assert "TypeError" in str(caught.value.errors[0])


def test_unused_rules_and_shapers_are_warnings(registry: Registry) -> None:
    config = load_config(textwrap.dedent(BASE) + textwrap.dedent("""
        [access.r]
        [access.spare]
        deny = ["10.0.0.0/8"]
        [shaper.idle]
        rate = "1MiB/s"
    """), registry)
    assert "access.spare: not used by any listener or route" in config.warnings
    assert "shaper.idle: not used by any listener" in config.warnings
    assert not any(w.startswith("access.r:") for w in config.warnings)


networks4 = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                      st.integers(0, 2**32 - 1), st.integers(0, 32))


@settings(max_examples=300, deadline=None)
@given(allow=st.lists(networks4, max_size=5), deny=st.lists(networks4, max_size=5),
       default=st.sampled_from([ALLOW, DENY]), address=st.integers(0, 2**32 - 1),
       mapped=st.booleans())
def test_cidr_matches_a_plain_reading_of_the_rules(
    allow: list[Any], deny: list[Any], default: Decision, address: int, mapped: bool,
) -> None:
    ip = ipaddress.IPv4Address(address)
    r = CIDRRule(allow=tuple(allow), deny=tuple(deny), default=default)
    peer = v6(f"::ffff:{ip}") if mapped else v4(str(ip))
    expected = DENY if any(ip in n for n in deny) else \
        ALLOW if any(ip in n for n in allow) else default
    assert r.decide(peer, None) is expected
    assert r.decide(peer, Match({"sni": "x.example"})) is expected
