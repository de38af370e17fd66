"""
The guard around the detection chain: access rules and connection limits.

Each listener has one :class:`Guard` per config generation (it is part of the
listener's runtime) and one :class:`GuardState` for the life of the process (the
counters a reload must not reset). The chain asks it three times:

1. :meth:`Guard.accept` in ``buildProtocol``: ``max_connections``. A refused
   connection gets no protocol at all, so Twisted closes the socket at once.
2. :meth:`Guard.admit` when the real client is known (on accept, or after a
   trusted PROXY header): the listener's access rule, then concurrent connections
   and the new-connection rate of the client's address (IPv6 grouped by
   ``per_ip_prefix_v6``; an onion circuit is one client).
3. :meth:`Guard.routed` once a route is chosen: the listener's rule again, with
   the facts, then the route's own rule.

Every refusal is counted in ``gatekeep_refusals_total{listener,reason}`` and
logged at a bounded rate (:mod:`gatekeep.refusals`).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from zope.interface import implementer

from gatekeep.addresses import format_address
from gatekeep.config.model import ListenerConfig
from gatekeep.interfaces import IAccessRule
from gatekeep.refusals import RefusalLog
from gatekeep.rules.cidr import client_ip
from gatekeep.shapers.bucket import Bucket
from gatekeep.values import Decision, FactValue, Match, Route

__all__ = [
    "Guard",
    "GuardState",
    "Limits",
    "NamedRule",
    "Refusal",
    "client_key",
    "limits_of",
]

log = Logger()

#: Past this many remembered rate buckets, the full ones (clients quiet for a
#: while) are forgotten: the table's size follows the clients of the last moments.
SWEEP_AT = 4096


#: A rule that raises is logged at most once per this many seconds.
FAILURE_LOG_INTERVAL = 10.0


@implementer(IAccessRule)
@attrs.frozen
class NamedRule:
    """
    An ``[access.NAME]`` rule with its name (the refusal reason names it).

    A rule that raises, or answers something other than a Decision, is a bug in
    the rule: the connection is denied (an access rule fails closed) and the
    failure logged, at most once per :data:`FAILURE_LOG_INTERVAL`.
    """

    name: str
    rule: IAccessRule
    _logged: list[float] = attrs.field(factory=list, repr=False, eq=False)

    def decide(self, peer: IAddress, match: Match | None) -> Decision:
        try:
            decision: object = self.rule.decide(peer, match)
        except Exception:  # noqa: BLE001 - a plugin's bug must only cost this connection
            if self._may_log():
                log.failure("access rule {rule} raised; the connection is denied",
                            rule=self.name)
            return Decision.DENY
        if isinstance(decision, Decision):
            return decision
        if self._may_log():
            log.error("access rule {rule} answered {answer!r}, not a Decision; the "
                      "connection is denied", rule=self.name, answer=decision)
        return Decision.DENY

    def _may_log(self) -> bool:
        now = time.monotonic()  # only paces log lines: no decision depends on it
        if self._logged and now - self._logged[0] < FAILURE_LOG_INTERVAL:
            return False
        self._logged[:] = [now]
        return True

    def describe(self) -> str:
        return f"{self.name}: {self.rule.describe()}"


@attrs.frozen
class Limits:
    """A listener's connection limits (None: no limit)."""

    max_connections: int | None = None
    per_ip: int | None = None
    rate: float | None = None
    burst: int | None = None
    prefix_v6: int = 64
    #: Onion listeners: every client address (a tor circuit) is a client of its own.
    whole_address: bool = False

    @property
    def per_client(self) -> bool:
        return self.per_ip is not None or self.rate is not None

    def describe(self) -> list[str]:
        parts = []
        if self.max_connections is not None:
            parts.append(f"max_connections {self.max_connections}")
        if self.per_ip is not None:
            parts.append(f"max_connections_per_ip {self.per_ip}")
        if self.rate is not None:
            burst = self.burst if self.burst is not None else _default_burst(self.rate)
            parts.append(f"connection_rate_per_ip {self.rate:g}/s (burst {burst:g})")
        if self.per_client:
            parts.append("per circuit" if self.whole_address
                         else f"IPv6 per /{self.prefix_v6}")
        return parts


def _default_burst(rate: float) -> float:
    return max(1.0, float(int(rate + 0.999999)))


def client_key(client: IAddress | object, prefix_v6: int, whole: bool = False) -> str | None:
    """
    Who counts as one client for per-IP limits: the IPv4 address, the IPv6 address's
    ``/prefix_v6`` network (the whole address when ``whole``), None for UNIX peers.
    """
    ip = client_ip(client)
    if ip is None:
        return None
    if ip.version == 4 or whole or prefix_v6 >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, prefix_v6), strict=False))


def limits_of(listener: ListenerConfig) -> Limits:
    """A listener's connection limits as the guard applies them."""
    return Limits(listener.max_connections, listener.max_connections_per_ip,
                  listener.connection_rate_per_ip, listener.connection_burst_per_ip,
                  listener.per_ip_prefix_v6, whole_address=listener.tor is not None)


@attrs.frozen
class Refusal:
    """Why a connection is refused: ``reason`` for the metric, ``why`` for the log."""

    reason: str
    why: str


class GuardState:
    """A listener's counters, kept across reloads."""

    def __init__(self, listener: str, clock: Any) -> None:
        self.open = 0
        self.per_ip: dict[str, int] = {}
        self.buckets: dict[str, Bucket] = {}
        self.refusals = RefusalLog(listener, clock)

    def sweep(self, now: float) -> None:
        for key in [k for k, bucket in self.buckets.items() if bucket.full(now)]:
            del self.buckets[key]


@attrs.frozen
class Guard:
    """One listener's access rule and limits, for one config generation."""

    listener: str
    state: GuardState
    clock: Any = attrs.field(repr=False)
    limits: Limits = attrs.field(factory=Limits)
    access: NamedRule | None = None

    @property
    def active(self) -> bool:
        """Whether anything needs checking once the client is known."""
        return self.access is not None or self.limits.per_client

    def inner(self) -> Guard:
        """
        For a nested chain (after ``terminate``): its routes' rules, counted and
        logged with this listener's, without asking the listener's rule and limits
        again (the outer connection passed them).
        """
        return attrs.evolve(self, limits=Limits(), access=None)

    def accept(self, peer: IAddress | object) -> bool:
        """``max_connections``: count the new connection, or refuse it (False)."""
        limit = self.limits.max_connections
        if limit is not None and self.state.open >= limit:
            self.state.refusals.refused(
                format_address(peer), "max_connections",
                f"max_connections ({limit}) reached")
            return False
        self.state.open += 1
        return True

    def closed(self) -> None:
        """A connection :meth:`accept` counted has ended."""
        self.state.open -= 1

    def admit(self, client: IAddress) -> tuple[Refusal | None, str | None]:
        """
        The client is known: ask the listener's rule, then the per-client limits.
        Returns the refusal (or None) and the key counted for the client, which
        :meth:`release` must be given when the connection ends.
        """
        if self.access is not None and self.access.decide(client, None) is Decision.DENY:
            return self._rule_refusal(self.access), None
        limits = self.limits
        if not limits.per_client:
            return None, None
        key = client_key(client, limits.prefix_v6, limits.whole_address)
        if key is None:
            return None, None
        state = self.state
        count = state.per_ip.get(key, 0)
        if limits.per_ip is not None and count >= limits.per_ip:
            return Refusal("max_connections_per_ip",
                           f"max_connections_per_ip ({limits.per_ip}) reached for {key}"), None
        if limits.rate is not None:
            now = self.clock.seconds()
            bucket = state.buckets.get(key)
            if bucket is None:
                if len(state.buckets) >= SWEEP_AT:
                    state.sweep(now)
                burst = limits.burst if limits.burst is not None \
                    else _default_burst(limits.rate)
                bucket = state.buckets[key] = Bucket(limits.rate, burst, now)
            if not bucket.take(now):
                return Refusal("connection_rate_per_ip",
                               f"connection_rate_per_ip ({limits.rate:g}/s) exceeded by "
                               f"{key}"), None
        state.per_ip[key] = count + 1
        return None, key

    def release(self, key: str) -> None:
        """The connection :meth:`admit` counted under ``key`` has ended."""
        per_ip = self.state.per_ip
        left = per_ip.get(key, 0) - 1
        if left > 0:
            per_ip[key] = left
        else:
            per_ip.pop(key, None)

    def routed(self, client: IAddress, route: Route, detector: str | None,
               facts: Mapping[str, FactValue]) -> Refusal | None:
        """A route was chosen: the listener's rule with the facts, then the route's."""
        if self.access is None and route.access is None:
            return None  # (most connections: nothing to ask)
        rules = [r for r in (self.access, route.access) if r is not None]
        match = Match({**facts, "protocol": detector} if detector else dict(facts))
        for rule in rules:
            if rule.decide(client, match) is Decision.DENY:
                return self._rule_refusal(rule)
        return None

    def refused(self, client: IAddress | object, refusal: Refusal) -> None:
        self.state.refusals.refused(format_address(client), refusal.reason, refusal.why)

    @staticmethod
    def _rule_refusal(rule: IAccessRule) -> Refusal:
        name = getattr(rule, "name", "route")
        return Refusal(f"access:{name}", f"access rule {name} denies it")
