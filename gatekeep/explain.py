"""
``gatekeep explain``: run captured bytes through a listener's chain, showing why.

It uses the very functions the live chain uses (:func:`run_detectors` and
:func:`walk_routes`), so its answer is the answer a real connection gets.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping
from pathlib import Path

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from gatekeep.addresses import format_address
from gatekeep.config.model import Config, ListenerConfig
from gatekeep.connlog import format_facts
from gatekeep.detectors.proxy import PREAMBLE, header_facts
from gatekeep.guard import Guard, GuardState, limits_of
from gatekeep.preamble import Done, Refuse, endpoints_from, step
from gatekeep.proxyproto import ProxyHeader
from gatekeep.registry import Registry
from gatekeep.routing import Outcome, select_route, walk_routes
from gatekeep.sniff import SNIFF_CAP, ListenerRuntime, run_detectors
from gatekeep.values import Decision, FactValue, Match, NeedMore, NoMatch, Route, Verdict

__all__ = ["explain", "parse_client", "read_input"]


def parse_client(text: str) -> IAddress:
    """``203.0.113.5``, ``203.0.113.5:4711``, ``2001:db8::1`` or ``[2001:db8::1]:4711``."""
    host, port = text, 0
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 0
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number) if number.isdigit() else -1
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (optionally with :PORT)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r} has a bad port")
    if ip.version == 4:
        return IPv4Address("TCP", str(ip), port)
    return IPv6Address("TCP", str(ip), port)


def read_input(spec: str) -> bytes:
    """The client's bytes from a file, ``hex:...``, ``-`` (stdin) or a pcap/pcapng file."""
    if spec.startswith("hex:"):
        digits = "".join(spec[4:].replace(":", "").split())
        return bytes.fromhex(digits)
    data = sys.stdin.buffer.read() if spec == "-" else Path(spec).read_bytes()
    from gatekeep.pcap import client_payload, is_capture

    if is_capture(data):
        payload: bytes = client_payload(data)
        return payload
    return data


def _verdict_text(verdict: Verdict) -> str:
    if isinstance(verdict, Match):
        return f"match   {format_facts(verdict.facts) or '(no facts)'}"
    if isinstance(verdict, NoMatch):
        return "no match" + (f" ({verdict.reason})" if verdict.reason else "")
    assert isinstance(verdict, NeedMore)
    return "needs more bytes"


def _preamble(
    listener: ListenerConfig, data: bytes,
) -> tuple[list[str], Verdict | None, int, ProxyHeader | None]:
    """What the listener's PROXY preamble makes of ``data``, as if sent by a trusted proxy."""
    mode = listener.proxy_mode
    if mode == "off":
        return [], None, 0, None
    outcome = step(mode, True, data, None)
    if not isinstance(outcome, Done | Refuse):
        outcome = step(mode, True, data, "the input ends")
    if isinstance(outcome, Refuse):
        return [f"PROXY preamble ({mode}, from a trusted proxy): "
                f"the connection is closed: {outcome.reason}"], None, -1, None
    assert isinstance(outcome, Done)
    header = outcome.header
    if header is None:
        return [f"PROXY preamble ({mode}): no header; detection starts "
                "at the first byte"], NoMatch("no PROXY header"), 0, None
    facts = header_facts(header)
    source = header.source if header.relayed else "(the real peer: kept)"
    return [f"PROXY preamble: v{header.version} header of {header.length} bytes, client "
            f"{source}; {format_facts(facts)}"], Match(facts, header.length), header.length, \
        header


def _access_lines(config: Config, listener: ListenerConfig, route: Route,
                  client: IAddress | None, detector: str | None,
                  facts: Mapping[str, FactValue]) -> list[str]:
    """The access rules a connection on ``route`` meets, decided if the client is known."""
    from gatekeep.cli import listener_guard_lines

    lines = ["access:"] + [f"  listener: {line}" for line in
                           listener_guard_lines(listener, config)]
    if route.access is not None:
        lines.append(f"  route {route.name}: access {route.access.describe()}")
    if client is None:
        if listener.access is not None or route.access is not None:
            lines.append("  (no client address: give --client IP, or input starting with a "
                         "PROXY header, to see the decision)")
        return lines
    guard = Guard(listener.name, GuardState(listener.name, None), None,
                  access=config.access.get(listener.access) if listener.access else None)
    on_accept = guard.access.decide(client, None) if guard.access is not None else None
    refusal = guard.routed(client, route, detector, facts)
    who = format_address(client)
    if on_accept is Decision.DENY:
        lines.append(f"  client {who}: refused on accept by access rule {listener.access}")
    elif refusal is not None:
        lines.append(f"  client {who}: refused once routed: {refusal.why}")
    else:
        lines.append(f"  client {who}: allowed")
    return lines


def explain(config: Config, registry: Registry, listener_name: str, data: bytes,
            client: IAddress | None = None) -> str:
    """
    The report: detector verdicts, each route considered, the route taken, and the
    access rules met (decided for ``client``, or the PROXY header's client).
    """
    listeners = {listener.name: listener for listener in config.listeners}
    if listener_name not in listeners:
        raise KeyError(f"no listener named {listener_name!r}; "
                       f"listeners: {', '.join(listeners)}")
    listener = listeners[listener_name]
    service = config.services[listener.service]
    runtime = ListenerRuntime.build(listener.name, service, registry.detectors,
                                    listener.detect_timeout, reactor=None)
    lines = [f"listener {listener.name} ({listener.where}) -> service {service.name}; "
             f"{len(data)} bytes of input" + (f", first {SNIFF_CAP} used" if len(data) > SNIFF_CAP
                                              else "")]
    preamble_lines, preamble, consumed, header = _preamble(listener, data)
    if client is None and header is not None and header.relayed:
        unknown = UNIXAddress(None)
        named = endpoints_from(header, unknown, unknown)[0]
        client = None if named is unknown else named
    lines += preamble_lines
    if consumed < 0:
        return "\n".join(lines)
    prefix = data[consumed:consumed + SNIFF_CAP]
    given: dict[str, Verdict] = {}
    if any(route.detector == PREAMBLE for route in service.routes):
        given[PREAMBLE] = preamble or NoMatch("the listener does not receive PROXY headers")

    verdicts: dict[str, Verdict] = dict(given)
    run_detectors(runtime.detectors, prefix, verdicts, final=False)
    final = select_route(service, verdicts, final=False).waiting or len(prefix) >= SNIFF_CAP
    if final:
        lines.append(f"the chain would wait for more bytes; if none come within "
                     f"{listener.detect_timeout:g}s (or the client closes):")
        verdicts = dict(given)
        run_detectors(runtime.detectors, prefix, verdicts, final=True)

    lines.append("detectors:")
    width = max((len(name) for name in registry.detectors), default=0)
    for name in [*given, *runtime.detectors]:
        lines.append(f"  {name:<{width}}  {_verdict_text(verdicts[name])}")
    others: dict[str, Verdict] = {}
    unused = {n: d for n, d in registry.detectors.items()
              if n not in runtime.detectors and n not in given}
    run_detectors(unused, prefix, others, final=final)
    for name, verdict in others.items():
        lines.append(f"  {name:<{width}}  {_verdict_text(verdict)}  [not used by this service]")

    lines.append("routes:")
    checks = {check.route.name: check for check in walk_routes(service, verdicts, final)}
    for number, route in enumerate(service.routes, 1):
        check = checks.get(route.name)
        state = f"{check.outcome.value:<8} {check.why}" if check else "not reached"
        lines.append(f"  {number}. {route.name}: {state}")
    selection = select_route(service, verdicts, final)
    taken = selection.route
    if taken is not None and (listener.access or taken.access
                              or limits_of(listener).describe()):
        detector = taken.detector if selection.match is not None else None
        if detector is None:
            detector = next((n for n, v in verdicts.items()
                             if isinstance(v, Match) and n != PREAMBLE), None)
        found = verdicts.get(detector) if detector is not None else None
        facts = found.facts if isinstance(found, Match) else {}
        lines += _access_lines(config, listener, taken, client, detector, facts)
    if taken is None:
        lines.append("result: no route; the connection is rejected")
    else:
        how = " (the service's default)" if selection.by_default else ""
        lines.append(f"result: route {taken.name}{how} -> {taken.target.describe()}")
    if any(c.outcome is Outcome.WAITING for c in checks.values()):
        lines.append("note: a route was still waiting for bytes")
    return "\n".join(lines)
