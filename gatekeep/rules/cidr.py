"""
The built-in access rule (``kind = "cidr"``, the default): client networks and facts.

Order is fixed and documented: a ``deny`` entry always wins; then the first
``[[access.NAME.when]]`` clause whose facts fit decides with its own lists and
default; without one, ``allow`` and then ``default`` decide.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from gatekeep.config.schema import setting
from gatekeep.detectors._names import normalise_host
from gatekeep.interfaces import IAccessRule
from gatekeep.preamble import plain_ip
from gatekeep.routing import NAME_FACTS, condition_fits
from gatekeep.values import Condition, Decision, Match

__all__ = ["CIDRRule", "Clause", "client_ip", "parse_decision", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(value: object) -> tuple[Network, ...]:
    """A list of addresses or CIDR networks, IPv4 or IPv6; host bits are an error."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError('expected a list of CIDR strings, e.g. ["10.0.0.0/8", "2001:db8::/32"]')
    networks = []
    for entry in value:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IPv4/IPv6 address or CIDR network") from None
        if str(network) != entry and str(network.network_address) != entry:
            raise ValueError(f"{entry!r} has host bits set: did you mean {str(network)!r}?")
        networks.append(network)
    return tuple(networks)


def parse_decision(value: object) -> Decision:
    if value == "allow":
        return Decision.ALLOW
    if value == "deny":
        return Decision.DENY
    raise ValueError(f'expected "allow" or "deny", not {value!r}')


def client_ip(peer: IAddress | object) -> IP | None:
    """The client's IP (IPv4-mapped IPv6 as IPv4), or None for a UNIX socket peer."""
    if isinstance(peer, IPv4Address | IPv6Address):
        return plain_ip(peer.host)
    return None


def _within(ip: IP | None, networks: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip in network for network in networks)


def _conditions(value: object) -> tuple[Condition, ...]:
    if not isinstance(value, dict) or not value:
        raise TypeError('expected a table of facts, e.g. facts = { sni = ["admin.example.org"] }')
    conditions = []
    for key, raw in value.items():
        listed = raw if isinstance(raw, list) else [raw]
        if not listed or not all(isinstance(v, str | int | bool) for v in listed):
            raise ValueError(f"facts.{key}: expected a value or a non-empty list of "
                             "strings/numbers")
        if key in NAME_FACTS:
            names = []
            for pattern in map(str, listed):
                wildcard = pattern.startswith("*.")
                name = normalise_host((pattern[2:] if wildcard else pattern).rstrip("."))
                if name is None:
                    raise ValueError(f"facts.{key}: bad name pattern {pattern!r}")
                names.append(("*." if wildcard else "") + name)
            listed = names
        conditions.append(Condition(key, tuple(listed)))
    return tuple(conditions)


@attrs.frozen
class Clause:
    """One ``[[access.NAME.when]]``: facts to fit, and what decides when they do."""

    conditions: tuple[Condition, ...]
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    default: Decision | None = None

    def fits(self, facts: Mapping[str, Any]) -> bool:
        return all(condition_fits(c, facts) for c in self.conditions)

    def describe(self, default: Decision) -> str:
        tests = " ".join(f"{c.key}={','.join(map(str, c.values))}" for c in self.conditions)
        return f"when {tests}: {_lists(self.allow, self.deny, self.default or default)}"


_CLAUSE_KEYS = ("facts", "allow", "deny", "default")


def _clauses(value: object) -> tuple[Clause, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TypeError("expected an array of tables: [[access.NAME.when]]")
    clauses = []
    for index, table in enumerate(value):
        unknown = [k for k in table if k not in _CLAUSE_KEYS]
        if unknown:
            raise ValueError(f"when[{index}]: unknown key {unknown[0]!r}; valid keys: "
                             f"{', '.join(_CLAUSE_KEYS)}")
        if "facts" not in table:
            raise ValueError(f"when[{index}]: missing required key 'facts'")
        try:
            clauses.append(Clause(
                _conditions(table["facts"]),
                parse_networks(table.get("allow", [])),
                parse_networks(table.get("deny", [])),
                parse_decision(table["default"]) if "default" in table else None))
        except (TypeError, ValueError) as error:
            raise ValueError(f"when[{index}]: {error}") from None
    return tuple(clauses)


def _lists(allow: tuple[Network, ...], deny: tuple[Network, ...], default: Decision) -> str:
    parts = []
    if deny:
        parts.append("deny " + ", ".join(map(str, deny)))
    if allow:
        parts.append("allow " + ", ".join(map(str, allow)))
    parts.append(f"otherwise {default.value}")
    return "; ".join(parts)


@implementer(IAccessRule)
@attrs.frozen
class CIDRRule:
    """
    `kind = "cidr"` (the default): allow or deny by the client's network and by
    detected facts. The client is the real one (after a trusted PROXY header); a
    UNIX-socket client is in no network, so only `default` applies to it.
    """

    allow: tuple[Network, ...] = setting(
        'Client networks let in: IPv4/IPv6 addresses or CIDR networks, e.g. '
        '`["10.0.0.0/8", "2001:db8::/32"]` (IPv4-mapped IPv6 clients count as IPv4).',
        default=(), parse=parse_networks, shown="`[]`")
    deny: tuple[Network, ...] = setting(
        "Client networks refused. Deny wins: a client in `deny` is refused even when "
        "`allow` or a `when` clause would let it in.",
        default=(), parse=parse_networks, shown="`[]`")
    default: Decision = setting(
        '`"allow"` or `"deny"`: the decision for a client in neither list.',
        default=Decision.ALLOW, parse=parse_decision, shown='"allow"')
    when: tuple[Clause, ...] = setting(
        "Ordered `[[access.NAME.when]]` clauses for what was detected: "
        '`facts = { sni = ["admin.example.org"] }` (any detector\'s facts, plus '
        '`protocol`, the detector\'s name; names exact or `*.` wildcards, lists match '
        "any entry) and the clause's own `allow`, `deny` and `default` (default: the "
        "rule's). The first clause whose facts all fit replaces the rule's `allow` and "
        "`default`; the rule's `deny` still applies. On a listener, a rule with `when` "
        "clauses decides once the route is chosen (its `deny` list already on accept).",
        default=(), parse=_clauses, shown="`[]`")

    def decide(self, peer: IAddress, match: Match | None) -> Decision:
        ip = client_ip(peer)
        if _within(ip, self.deny):
            return Decision.DENY
        if match is None and self.when:
            return Decision.ABSTAIN  # which clause applies is known after detection
        if match is not None:
            for clause in self.when:
                if clause.fits(match.facts):
                    if _within(ip, clause.deny):
                        return Decision.DENY
                    if _within(ip, clause.allow):
                        return Decision.ALLOW
                    return clause.default or self.default
        return Decision.ALLOW if _within(ip, self.allow) else self.default

    def describe(self) -> str:
        text = _lists(self.allow, self.deny, self.default)
        for clause in self.when:
            text += f"; {clause.describe(self.default)}"
        return text
