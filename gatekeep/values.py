"""
Plain data shared between the chain, detectors, targets and plugins.

Everything here is an attrs class; all but :class:`ConnectionRecord` (the running
tally of one connection, written as it goes) are frozen.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, ITransport

    from gatekeep.interfaces import IAccessRule, ITarget
    from gatekeep.proxyproto import ProxyHeader

__all__ = [
    "Condition",
    "ConnectionRecord",
    "Decision",
    "FactValue",
    "Inbound",
    "Match",
    "NeedMore",
    "NoMatch",
    "Route",
    "Service",
    "Verdict",
]

#: What a detector may report about a connection. Byte strings never appear here:
#: detectors validate and decode names before reporting them (SNI as IDNA text, ...).
FactValue = str | int | bool | tuple[str, ...] | None


def _freeze_facts(facts: Mapping[str, FactValue]) -> Mapping[str, FactValue]:
    return dict(facts)


@attrs.frozen(eq=True, hash=False)
class Match:
    """
    The detector recognised its protocol.

    ``facts`` are what routes may test (``match.<detector> = {key = [...]}``) and what
    logs show. ``consumed`` is for preambles only (PROXY protocol): how many bytes the
    preamble took, which the chain strips before detecting again.
    """

    facts: Mapping[str, FactValue] = attrs.field(factory=dict, converter=_freeze_facts)
    consumed: int = 0


@attrs.frozen
class NoMatch:
    """The bytes are not this detector's protocol. ``reason`` helps ``gatekeep explain``."""

    reason: str = ""


@attrs.frozen
class NeedMore:
    """Not decidable yet: ask again when more bytes have arrived."""


Verdict = Match | NoMatch | NeedMore


class Decision(enum.Enum):
    """An access rule's answer."""

    ALLOW = "allow"
    DENY = "deny"
    ABSTAIN = "abstain"


@attrs.frozen
class Condition:
    """
    One key of a route's match table: the fact ``key`` must fit one of ``values``.

    How a value fits depends on the fact (exact names and ``*.`` wildcards for names,
    prefixes for paths, equality otherwise); see :mod:`gatekeep.routing`.
    """

    key: str
    values: tuple[str | int | bool, ...]


@attrs.frozen
class Route:
    """
    One entry of a service's ordered route list.

    ``detector`` is None for a catch-all route (no ``match`` table).
    """

    name: str
    detector: str | None
    conditions: tuple[Condition, ...]
    target: ITarget
    access: IAccessRule | None = None
    connect_timeout: float | None = None
    #: Override the listener's ``idle_timeout`` / ``max_lifetime`` once routed.
    idle_timeout: float | None = None
    max_lifetime: float | None = None


@attrs.frozen
class Service:
    """A named, ordered list of routes with the route used when nothing matches."""

    name: str
    routes: tuple[Route, ...]
    default: str | None = None

    def route_named(self, name: str) -> Route | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None


@attrs.define(slots=True)
class ConnectionRecord:
    """
    The running tally of one connection, from accept to close.

    Written by the chain and the target as the connection goes; read once at the
    end for the connection's log line (and metrics).
    """

    listener: str
    client: str
    started: float
    protocol: str | None = None
    facts: Mapping[str, FactValue] = attrs.field(factory=dict)
    route: str | None = None
    backend: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    close_reason: str | None = None

    def close(self, reason: str) -> None:
        """Record why the connection ended; the first reason given wins."""
        if self.close_reason is None:
            self.close_reason = reason


@attrs.frozen
class Inbound:
    """
    A detected connection, handed to a route's target.

    ``client`` is the real client address and ``server`` the address it connected
    to: after a trusted PROXY preamble, the ones its header gave (``proxy`` is that
    header; its TLVs are in the connection's log facts as ``proxy_*``). Everything
    that cares who the client is (access rules, X-Forwarded-For, outgoing PROXY
    headers, logs) uses ``client``, never the transport's peer. ``prefix`` holds the
    bytes the chain read while detecting (after the preamble), which the target's
    protocol receives first.
    """

    listener: str
    client: IAddress
    server: IAddress
    transport: ITransport
    detector: str | None
    facts: Mapping[str, FactValue]
    prefix: bytes
    route: Route
    record: ConnectionRecord
    #: The reactor to use for connections and timers (injected, so tests use fakes).
    reactor: Any = attrs.field(repr=False)
    #: The PROXY header a trusted proxy sent before the client's bytes, if any.
    proxy: ProxyHeader | None = None
    #: The connection's ``[shaper.X]`` pacing (:class:`gatekeep.shapers.shaping.Shaping`),
    #: if its listener has one: relays report the bytes they pass on to it.
    shaping: Any = attrs.field(default=None, repr=False)
    #: The listener's :class:`gatekeep.guard.Guard`, if any: a nested chain (after
    #: ``terminate``) checks its own routes' access rules with it.
    guard: Any = attrs.field(default=None, repr=False)
