"""
``gatekeep explain``: run captured bytes through a listener's chain, showing why.

It uses the very functions the live chain uses (:func:`run_detectors` and
:func:`walk_routes`), so its answer is the answer a real connection gets.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gatekeep.config.model import Config, ListenerConfig
from gatekeep.connlog import format_facts
from gatekeep.detectors.proxy import PREAMBLE, header_facts
from gatekeep.preamble import Done, Refuse, step
from gatekeep.registry import Registry
from gatekeep.routing import Outcome, select_route, walk_routes
from gatekeep.sniff import SNIFF_CAP, ListenerRuntime, run_detectors
from gatekeep.values import Match, NeedMore, NoMatch, Verdict

__all__ = ["explain", "read_input"]


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


def _preamble(listener: ListenerConfig, data: bytes) -> tuple[list[str], Verdict | None, int]:
    """What the listener's PROXY preamble makes of ``data``, as if sent by a trusted proxy."""
    mode = listener.proxy_mode
    if mode == "off":
        return [], None, 0
    outcome = step(mode, True, data, None)
    if not isinstance(outcome, Done | Refuse):
        outcome = step(mode, True, data, "the input ends")
    if isinstance(outcome, Refuse):
        return [f"PROXY preamble ({mode}, from a trusted proxy): "
                f"the connection is closed: {outcome.reason}"], None, -1
    assert isinstance(outcome, Done)
    header = outcome.header
    if header is None:
        return [f"PROXY preamble ({mode}): no header; detection starts "
                "at the first byte"], NoMatch("no PROXY header"), 0
    facts = header_facts(header)
    source = header.source if header.relayed else "(the real peer: kept)"
    return [f"PROXY preamble: v{header.version} header of {header.length} bytes, client "
            f"{source}; {format_facts(facts)}"], Match(facts, header.length), header.length


def explain(config: Config, registry: Registry, listener_name: str, data: bytes) -> str:
    """The report: detector verdicts, each route considered, the route taken."""
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
    preamble_lines, preamble, consumed = _preamble(listener, data)
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
    if taken is None:
        lines.append("result: no route; the connection is rejected")
    else:
        how = " (the service's default)" if selection.by_default else ""
        lines.append(f"result: route {taken.name}{how} -> {taken.target.describe()}")
    if any(c.outcome is Outcome.WAITING for c in checks.values()):
        lines.append("note: a route was still waiting for bytes")
    return "\n".join(lines)
