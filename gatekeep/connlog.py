"""
The one log line per connection.

Emitted as a structured ``twisted.logger`` event, so the text form reads well and
a JSON observer gets every field (client, listener, route, bytes_in, bytes_out...).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping

from twisted.logger import Logger, LogLevel

from gatekeep import metrics
from gatekeep.logformat import PREFORMATTED
from gatekeep.values import ConnectionRecord, FactValue

__all__ = ["format_facts", "log_connection"]

log = Logger(namespace="gatekeep.connection")

_FORMAT = (
    "{client} {listener} {protocol}{facts_text} route={route} backend={backend} "
    "in={bytes_in} out={bytes_out} time={duration:.3f}s close={close_reason}"
)


# A fact value with one of these is written as a JSON string.
_QUOTED = re.compile(r'[ "=\\]')


def _show(value: FactValue) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value) or "-"
    text = str(value)
    # Facts are validated by detectors, but plugins may report anything: never let
    # a client's bytes break the line or forge another field.
    if text and text.isprintable() and _QUOTED.search(text) is None:
        return text
    return json.dumps(text)


def format_facts(facts: Mapping[str, FactValue]) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in facts.items() if v not in (None, (), False))


def log_connection(record: ConnectionRecord, ended: float) -> None:
    """Write the connection's final line and count it in the metrics."""
    outcome = metrics.connection_ended(record)
    facts = record.facts
    shown = format_facts(facts) if facts else ""
    facts_text = " " + shown if shown else ""
    protocol = record.protocol or "unknown"
    route = record.route or "-"
    backend = record.backend or "-"
    duration = max(0.0, ended - record.started)
    close_reason = record.close_reason or "closed"
    # The line is formatted here, once (what _FORMAT says, as an f-string): twisted.logger's
    # PEP 3101 formatting of _FORMAT per event cost about half of this function (a
    # tenth of a short connection's CPU). The event is what log.info(PREFORMATTED, ...)
    # emits, key for key and in the same order, handed to the logger's observer
    # without Logger.emit's check of the level.
    log.observer({
        "log_text": (f"{record.client} {record.listener} {protocol}{facts_text} "
                     f"route={route} backend={backend} in={record.bytes_in} "
                     f"out={record.bytes_out} time={duration:.3f}s close={close_reason}"),
        "facts": dict(facts), "outcome": outcome,
        "client": record.client, "listener": record.listener, "protocol": protocol,
        "facts_text": facts_text, "route": route, "backend": backend,
        "bytes_in": record.bytes_in, "bytes_out": record.bytes_out, "duration": duration,
        "close_reason": close_reason,
        "log_logger": log, "log_level": LogLevel.info, "log_namespace": log.namespace,
        "log_source": None, "log_format": PREFORMATTED, "log_time": time.time()})
