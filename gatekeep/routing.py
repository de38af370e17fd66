"""
Route selection: which route of a service a connection takes, given the verdicts.

The same walk serves the live chain and ``gatekeep explain``, so what explain
prints is exactly what a connection would do.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping

import attrs

from gatekeep.values import Condition, FactValue, Match, NeedMore, Route, Service, Verdict

__all__ = [
    "NAME_FACTS",
    "Outcome",
    "RouteCheck",
    "condition_fits",
    "name_matches",
    "normalise_name",
    "select_route",
    "split_host_port",
    "walk_routes",
]

#: Facts holding DNS names: compared case-insensitively, trailing dot ignored,
#: ``*.`` patterns match any name below the parent (never the parent itself).
NAME_FACTS = frozenset({"sni", "host", "to", "from", "authority"})
#: Facts compared as prefixes (``/_matrix`` fits ``/_matrix/client/versions``).
PREFIX_FACTS = frozenset({"path"})


def normalise_name(name: str) -> str:
    return name.rstrip(".").lower()


def name_matches(pattern: str, name: str) -> bool:
    """Whether ``name`` fits ``pattern`` (an exact name or a ``*.`` wildcard)."""
    pattern = normalise_name(pattern)
    name = normalise_name(name)
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def split_host_port(pattern: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` -> (name, port or None)."""
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif pattern.count(":") == 1:
        host, _, port = pattern.partition(":")
    else:
        host, port = pattern, ""
    return host, int(port) if port.isdigit() else None


def _host_fits(pattern: str, facts: Mapping[str, FactValue], name: str) -> bool:
    # "fed.example.org:8448" requires that port; a bare name matches any port.
    host, port = split_host_port(pattern)
    if port is not None and facts.get("port") != port:
        return False
    return name_matches(host, name)


def condition_fits(condition: Condition, facts: Mapping[str, FactValue]) -> bool:
    """Whether the detected ``facts`` satisfy one match-table key."""
    key = condition.key
    value = facts.get(key)
    if value is None:
        return False
    if key in NAME_FACTS and isinstance(value, str):
        if key == "host":
            return any(_host_fits(str(p), facts, value) for p in condition.values)
        return any(name_matches(str(p), value) for p in condition.values)
    if key in PREFIX_FACTS and isinstance(value, str):
        return any(value.startswith(str(p)) for p in condition.values)
    if isinstance(value, tuple):
        # Lists the client offered (ALPN, ...): any listed entry offered is enough.
        return any(v in value for v in condition.values)
    return value in condition.values


class Outcome(enum.Enum):
    TAKEN = "taken"
    SKIPPED = "skipped"
    WAITING = "waiting"


@attrs.frozen
class RouteCheck:
    """What happened to one route during selection, and why (for explain)."""

    route: Route
    outcome: Outcome
    why: str
    match: Match | None = None


def walk_routes(
    service: Service, verdicts: Mapping[str, Verdict], final: bool
) -> Iterator[RouteCheck]:
    """
    Consider the routes in order; stop at the first taken or waiting route.

    ``final`` means no more bytes will come (deadline, cap, or client EOF), so a
    detector still asking for more counts as not matching. An earlier route that is
    still undecided blocks later ones: first match wins, even against time.
    """
    for route in service.routes:
        if route.detector is None:
            yield RouteCheck(route, Outcome.TAKEN, "catch-all route (no match table)")
            return
        verdict = verdicts.get(route.detector, NeedMore())
        if isinstance(verdict, NeedMore):
            if final:
                yield RouteCheck(route, Outcome.SKIPPED, f"{route.detector}: undecided at the end")
                continue
            yield RouteCheck(route, Outcome.WAITING, f"{route.detector}: needs more bytes")
            return
        if not isinstance(verdict, Match):
            reason = f" ({verdict.reason})" if verdict.reason else ""
            why = f"{route.detector}: no match{reason}"
            yield RouteCheck(route, Outcome.SKIPPED, why)
            continue
        for condition in route.conditions:
            if not condition_fits(condition, verdict.facts):
                seen = verdict.facts.get(condition.key)
                why = (
                    f"{route.detector}: {condition.key}={seen!r} "
                    f"fits none of {list(condition.values)!r}"
                )
                yield RouteCheck(route, Outcome.SKIPPED, why, verdict)
                break
        else:
            yield RouteCheck(route, Outcome.TAKEN, f"{route.detector} matched", verdict)
            return


@attrs.frozen
class Selection:
    """The result of :func:`select_route`: a route, or waiting for more bytes."""

    route: Route | None
    waiting: bool
    match: Match | None = None
    by_default: bool = False


WAIT = Selection(None, True)


def select_route(
    service: Service, verdicts: Mapping[str, Verdict], final: bool
) -> Selection:
    """
    The route a connection takes now, or :data:`WAIT`; route None means reject.

    The same decision as :func:`walk_routes` (tests hold them equal), without the
    explanations, which every connection would otherwise build and throw away.
    """
    for route in service.routes:
        detector = route.detector
        if detector is None:
            return Selection(route, False)
        verdict = verdicts.get(detector)
        if verdict is None or isinstance(verdict, NeedMore):
            if final:
                continue
            return WAIT
        if not isinstance(verdict, Match):
            continue
        facts = verdict.facts
        for condition in route.conditions:
            if not condition_fits(condition, facts):
                break
        else:
            return Selection(route, False, verdict)
    if service.default is None:
        return Selection(None, False)
    return Selection(service.route_named(service.default), False, None, True)

