"""
Prometheus metrics, served on the ``[admin]`` listener at ``/metrics``.

Other modules report through the small functions below (``connection_ended``,
``refused``, ``backend_connected``, ``tls_handshake``...) rather than touching
prometheus-client objects, so a feature built elsewhere (access rules, TLS
termination) needs one import and one call, and the metric names and labels stay
in one place: CONFIG.md's contract.

The metrics live in their own :class:`~prometheus_client.CollectorRegistry`
(:data:`REGISTRY`), not the library's global one, so importing gatekeep into
another program does not add gatekeep's series to that program's exposition.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from gatekeep import __version__
from gatekeep.metricstore import CounterStore, GaugeStore, HistogramStore, StoreCollector
from gatekeep.values import ConnectionRecord

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "backend_connect_failed",
    "backend_connected",
    "connection_ended",
    "connection_opened",
    "connections_by_route",
    "detected",
    "exposition",
    "http_request",
    "open_by_route",
    "outcome_of",
    "refused",
    "reloaded",
    "tls_handshake",
    "value",
]

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: detection is usually sub-millisecond, but waits for slow clients and
# server-speaks-first defaults (detect_timeout, 5 s by default).
_DETECT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds: from a cached answer in a millisecond to a slow backend's response_timeout.
_REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0)
_CONNECT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONNECTIONS = CounterStore(
    "gatekeep_connections", "Connections that ended, by how they were routed and how they ended.",
    ["listener", "route", "protocol", "outcome"])
BYTES = CounterStore(
    "gatekeep_bytes", "Bytes relayed: in = from clients, out = to clients (open connections "
    "are counted up to each scrape).", ["listener", "route", "direction"])
REFUSALS = CounterStore(
    "gatekeep_refusals", "Connections refused before reaching a backend, by reason.",
    ["listener", "reason"])
RELOADS = CounterStore(
    "gatekeep_reloads", "Config reloads: applied, or rejected (the old config kept serving).",
    ["outcome"])
LAST_RELOAD_OK = GaugeStore(
    "gatekeep_config_last_reload_successful", "1 if the last reload was applied, 0 if rejected.",
    [])
DETECT_SECONDS = HistogramStore(
    "gatekeep_detect_seconds", "Time from accept to the route decision.", ["listener"],
    _DETECT_BUCKETS)
OPEN = GaugeStore("gatekeep_connections_open", "Connections open now.", ["listener"])
BACKEND_CONNECT_SECONDS = HistogramStore(
    "gatekeep_backend_connect_seconds", "Time to connect to a backend (successful connects).",
    ["listener", "route"], _CONNECT_BUCKETS)
BACKEND_FAILURES = CounterStore(
    "gatekeep_backend_connect_failures", "Backend connects that failed, by reason.",
    ["listener", "route", "reason"])
TLS_HANDSHAKES = CounterStore(
    "gatekeep_tls_handshakes", "TLS handshakes gatekeep terminated, by outcome.",
    ["listener", "route", "outcome"])
TLS_HANDSHAKE_SECONDS = HistogramStore(
    "gatekeep_tls_handshake_seconds", "Duration of TLS handshakes gatekeep terminated.",
    ["listener", "route"], _CONNECT_BUCKETS)
HTTP_REQUESTS = CounterStore(
    "gatekeep_http_requests", "Requests the HTTP reverse proxy finished, by site, route ('-': "
    "none matched) and status code (499: the client left before the response ended).",
    ["listener", "site", "route", "code"])
HTTP_REQUEST_SECONDS = HistogramStore(
    "gatekeep_http_request_seconds", "Time from a request's head to the end of its response "
    "(WebSocket tunnels: to the switch).", ["listener", "site", "route"], _REQUEST_BUCKETS)
INFO = GaugeStore("gatekeep_info", "Always 1; the version as a label.", ["version"])
INFO.set((__version__,), 1)
LAST_RELOAD_OK.set((), 1)


# Close reasons (see docs/operations.md) -> outcome label. Anything else that ends
# a routed connection is "ok": the relay ran and one side closed or reset.
_OUTCOMES = {
    "no route": "no_route",
    "client closed before detection": "abandoned",
    "target error": "error",
    "rejected": "rejected",
    "responded": "responded",
    "backend connect timeout": "backend_error",
}


# Outcomes of close reasons seen so far: most connections end for one of a handful of
# reasons ("done", "client closed"...); the reasons that carry details (an error
# message, a duration) are many, so the memo stops growing at a bound.
_OUTCOME_MEMO: dict[str, str] = {}
_OUTCOME_MEMO_SIZE = 256


def outcome_of(record: ConnectionRecord) -> str:
    """
    One word for how a connection ended: ``ok``, ``no_route``, ``abandoned``,
    ``rejected``, ``responded``, ``backend_error``, ``refused``, ``timeout``
    (``idle_timeout``, ``max_lifetime``, or a stop's ``drain_timeout``), ``error``.
    """
    reason = record.close_reason or ""
    known = _OUTCOME_MEMO.get(reason)
    if known is not None:
        return known
    outcome = _outcome(reason)
    if len(_OUTCOME_MEMO) < _OUTCOME_MEMO_SIZE:
        _OUTCOME_MEMO[reason] = outcome
    return outcome


def _outcome(reason: str) -> str:
    if reason.startswith("backend unreachable"):
        return "backend_error"
    if reason.startswith(("refused", "PROXY header", "no PROXY header",
                          "incomplete PROXY header", "malformed PROXY header")):
        return "refused"
    if reason.startswith(("idle_timeout", "max_lifetime", "drain_timeout")):
        return "timeout"
    if reason.startswith("no route"):
        return "no_route"
    return _OUTCOMES.get(reason, "ok")


# Open connections, by id(record): the record and the bytes (in, out) of it already
# added to BYTES. Adding them at scrape time (not per read) keeps the relay's hot
# path free of metrics, and still shows a day-long connection's traffic as it flows.
_open: dict[int, tuple[ConnectionRecord, int, int]] = {}


def _add_bytes(record: ConnectionRecord, route: str, counted_in: int,
               counted_out: int) -> bool:
    """Add to BYTES what ``record`` relayed beyond what was counted; True if anything."""
    more = False
    if record.bytes_in > counted_in:
        BYTES.inc((record.listener, route, "in"), record.bytes_in - counted_in)
        more = True
    if record.bytes_out > counted_out:
        BYTES.inc((record.listener, route, "out"), record.bytes_out - counted_out)
        more = True
    return more


def _count_bytes(record: ConnectionRecord, route: str) -> None:
    _, counted_in, counted_out = _open.get(id(record), (record, 0, 0))
    if _add_bytes(record, route, counted_in, counted_out):
        _open[id(record)] = (record, max(counted_in, record.bytes_in),
                             max(counted_out, record.bytes_out))


def connection_opened(record: ConnectionRecord) -> None:
    OPEN.inc((record.listener,))
    _open[id(record)] = (record, 0, 0)


def connection_ended(record: ConnectionRecord) -> str:
    """Count one finished connection (called with its log line); returns its outcome."""
    listener = record.listener
    route = record.route or "-"
    outcome = outcome_of(record)
    CONNECTIONS.inc((listener, route, record.protocol or "unknown", outcome))
    # The connection leaves the open ones: its last bytes are counted here.
    entry = _open.pop(id(record), None)
    if entry is None:
        _add_bytes(record, route, 0, 0)
    else:
        OPEN.inc((listener,), -1)
        _add_bytes(record, route, entry[1], entry[2])
    if outcome == "no_route":
        REFUSALS.inc((listener, "no_route"))
    return outcome


def refused(listener: str, reason: str) -> None:
    """
    A connection refused before routing (access rule, connection limit, PROXY
    header missing or untrusted...). ``reason`` is a short, fixed word such as
    ``access``, ``max_connections``, ``rate``, ``proxy_untrusted``: never a client's
    address or bytes, which would make the label set unbounded.
    """
    REFUSALS.inc((listener, reason))


def detected(listener: str, seconds: float) -> None:
    DETECT_SECONDS.observe((listener,), max(0.0, seconds))


def backend_connected(listener: str, route: str, seconds: float) -> None:
    BACKEND_CONNECT_SECONDS.observe((listener, route), max(0.0, seconds))


def backend_connect_failed(listener: str, route: str, reason: str) -> None:
    """``reason``: ``timeout``, ``refused`` or ``unreachable``."""
    BACKEND_FAILURES.inc((listener, route, reason))


def tls_handshake(listener: str, route: str, outcome: str, seconds: float | None = None) -> None:
    """
    A TLS handshake gatekeep terminated: ``outcome`` is ``ok`` or a short failure
    word (``failed``, ``no_certificate``, ``client_certificate``...).
    """
    TLS_HANDSHAKES.inc((listener, route, outcome))
    if seconds is not None and outcome == "ok":
        TLS_HANDSHAKE_SECONDS.observe((listener, route), max(0.0, seconds))


def http_request(listener: str, site: str, route: str, status: int, seconds: float) -> None:
    """One request the HTTP reverse proxy finished (answered, failed or left by its client)."""
    HTTP_REQUESTS.inc((listener, site, route, _CODES.get(status) or str(status)))
    HTTP_REQUEST_SECONDS.observe((listener, site, route), max(0.0, seconds))


_CODES = {code: str(code) for code in range(100, 600)}


def reloaded(applied: bool) -> None:
    RELOADS.inc(("applied" if applied else "rejected",))
    LAST_RELOAD_OK.set((), 1 if applied else 0)


def _flush_open() -> None:
    """Add the bytes open connections relayed since the last flush (routed ones only)."""
    for record, _, _ in list(_open.values()):
        if record.route is not None:
            _count_bytes(record, record.route)


def exposition() -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(REGISTRY)


def value(name: str, **labels: str) -> float:
    """The current value of one series (0 if it does not exist yet); for tests and /status."""
    found = REGISTRY.get_sample_value(name, labels)
    return found if found is not None else 0.0


def open_by_route() -> dict[tuple[str, str], int]:
    """
    Open connections that have a route, per (listener, route); a connection routed
    inside ``terminate`` (``outer>inner``) counts for its listener's route, ``outer``.
    """
    counts: dict[tuple[str, str], int] = {}
    for record, _, _ in _open.values():
        if record.route is not None:
            key = (record.listener, record.route.partition(">")[0])
            counts[key] = counts.get(key, 0) + 1
    return counts


def connections_by_route() -> dict[tuple[str, str], int]:
    """
    Finished connections per (listener, route), all protocols and outcomes; as in
    :func:`open_by_route`, ``outer>inner`` counts for ``outer``.
    """
    totals: dict[tuple[str, str], int] = {}
    for (listener, route, _protocol, _outcome), count in CONNECTIONS.values.items():
        outer = route.partition(">")[0]
        totals[listener, outer] = totals.get((listener, outer), 0) + int(count)
    return totals


# Every scrape first adds what open connections relayed since the previous one.
REGISTRY.register(StoreCollector(
    [CONNECTIONS, BYTES, REFUSALS, RELOADS, LAST_RELOAD_OK, DETECT_SECONDS, OPEN,
     BACKEND_CONNECT_SECONDS, BACKEND_FAILURES, TLS_HANDSHAKES, TLS_HANDSHAKE_SECONDS,
     HTTP_REQUESTS, HTTP_REQUEST_SECONDS, INFO],
    before=_flush_open))
