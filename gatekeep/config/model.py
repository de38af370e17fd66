"""
The validated config model: what ``gatekeep check`` accepts and ``twistd`` runs.

Routes and services are compiled straight into the runtime values of
:mod:`gatekeep.values` (targets are built while loading, which is what validates
their options); listeners and route-level settings are declared here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import attrs

from gatekeep.config.endpoints import server_endpoint_problem
from gatekeep.config.schema import expect, setting
from gatekeep.config.tor import TorSettings
from gatekeep.config.units import parse_duration, parse_positive_rate
from gatekeep.preamble import ProxyMode
from gatekeep.values import Service

__all__ = [
    "AdminConfig",
    "Config",
    "GlobalSettings",
    "ListenerConfig",
    "RouteSettings",
    "ServiceSettings",
    "parse_name",
    "parse_server_endpoint",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit, at most 64 characters"
        )
    return value


def parse_server_endpoint(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected an endpoint string such as \"tcp:443\"")
    if value.split(":", 1)[0].strip().lower() == "onion":
        # txtorcon's onion: endpoint would publish a service whose clients all look like
        # 127.0.0.1, and make start-up wait for tor.
        raise ValueError("onion services are declared with a [listener.tor] table, not an "
                         "onion: endpoint (see the config reference)")
    problem = server_endpoint_problem(value)
    if problem:
        raise ValueError(
            problem + " (examples: \"tcp:443\", 'tcp6:443:interface=\\:\\:', "
            "\"unix:/run/gatekeep.sock\")"
        )
    return value


def _proxy_mode(value: object) -> ProxyMode:
    if value == "off" or value == "optional" or value == "required":
        return value
    raise ValueError(f'expected "off", "optional" or "required", not {value!r}')


def _trusted_proxies(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError('expected a list of CIDR strings, e.g. ["10.0.0.0/8", "::1/128"]')
    entries = []
    for entry in value:
        if entry == "unix":
            entries.append(entry)
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IPv4/IPv6 address or CIDR network "
                             '(or "unix")') from None
        if str(network) != entry and str(network.network_address) != entry:
            raise ValueError(f"{entry!r} has host bits set: did you mean {str(network)!r}?")
        entries.append(str(network))
    return tuple(entries)


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected a whole number")
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _event_rate(value: object) -> float:
    return parse_positive_rate(
        value, "events", 'is a rate of bytes; connections are counted, e.g. "20/s"'
    )


def _prefix_v6(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected a prefix length from 0 to 128")
    if not 0 <= value <= 128:
        raise ValueError("an IPv6 prefix length is from 0 to 128")
    return value


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


@attrs.frozen
class ListenerConfig:
    """``[[listener]]``: where gatekeep accepts connections and which service detects them."""

    name: str = setting("Unique name of the listener; used in logs and metrics.", parse=parse_name)
    endpoint: str | None = setting(
        "Twisted server endpoint string: `tcp:443`, `tcp6:443:interface=\\:\\:`, "
        "`unix:/run/gk.sock`, ... A listener has exactly one of `endpoint` or a "
        "`[listener.tor]` table.",
        default=None,
        parse=parse_server_endpoint,
        shown="required unless `[listener.tor]`",
    )
    service: str = setting("The `[service.X]` whose routes this listener uses.", parse=parse_name)
    detect_timeout: float = setting(
        "Total deadline for detection, from accept (not an idle timer). When it passes, "
        "detectors still undecided count as not matching, so a client that sends nothing "
        "(a server-speaks-first protocol) takes the service's default route.",
        default=5.0,
        parse=_positive_duration,
        shown='"5s"',
    )
    proxy_protocol: ProxyMode = setting(
        "Whether connections start with a PROXY protocol header (v1 or v2, told apart by "
        "their signatures) from a load balancer: `off`, `required` (a peer in "
        "`trusted_proxies` must send one; other peers are refused at once) or `optional` "
        "(a trusted peer may send one; from anyone else bytes starting with a PROXY "
        "signature are refused and other bytes are the client's own). The header's source "
        "address becomes the client address for logs, access rules, X-Forwarded-For and "
        "outgoing PROXY headers; its TLVs become `match.proxy` facts. A header that is "
        "malformed, or incomplete when `detect_timeout` passes, closes the connection with "
        "the reason in its log line.",
        default="off",
        parse=_proxy_mode,
        shown='"off"',
    )
    trusted_proxies: tuple[str, ...] = setting(
        "Peers whose PROXY headers are honoured: IPv4/IPv6 addresses or CIDR networks "
        "(`\"10.0.0.0/8\"`, `\"::1/128\"`; IPv4-mapped IPv6 peers count as IPv4), or "
        "`\"unix\"` for every peer of a UNIX socket listener. Required when "
        "`proxy_protocol` is not `off`.",
        default=(),
        parse=_trusted_proxies,
        shown="`[]`",
    )
    max_connections: int | None = setting(
        "Most connections this listener keeps open at once (from accept to close). Beyond "
        "it a new connection is closed right after accept, not queued, and counted in "
        '`gatekeep_refusals_total{reason="max_connections"}`.',
        default=None, parse=_positive_int, shown="no limit")
    max_connections_per_ip: int | None = setting(
        "Most connections open at once from one client address (the real client, after a "
        "trusted PROXY header; IPv6 grouped by `per_ip_prefix_v6`). Beyond it: refused.",
        default=None, parse=_positive_int, shown="no limit")
    connection_rate_per_ip: float | None = setting(
        'New connections a client address may open, e.g. `"20/s"` or `"600/m"` (a token '
        "bucket of `connection_burst_per_ip`, refilled at this rate). Beyond it: refused.",
        default=None, parse=_event_rate, shown="no limit")
    connection_burst_per_ip: int | None = setting(
        "How many new connections a client may open at once before "
        "`connection_rate_per_ip` applies (the bucket's size).",
        default=None, parse=_positive_int, shown="one second of the rate")
    per_ip_prefix_v6: int = setting(
        "IPv6 clients count as one client per network of this prefix length for the per-IP "
        "limits (a home or a VM usually gets a whole /64). On an onion listener each "
        "client address is a tor circuit and counts on its own whatever this says.",
        default=64, parse=_prefix_v6, shown="`64`")
    access: str | None = setting(
        "The `[access.NAME]` rule for this listener's connections: asked on accept (after "
        "the PROXY header, if any) and again with the detected facts once a route is "
        'chosen; a denial closes the connection, counted as `reason="access:NAME"`.',
        default=None, parse=parse_name, shown="none (everyone)")
    shaper: str | None = setting(
        "The `[shaper.NAME]` that paces this listener's forwarded connections, each "
        "direction on its own, by pausing reads (nothing is dropped or buffered).",
        default=None, parse=parse_name, shown="none (full speed)")
    idle_timeout: float | None = setting(
        "Close a connection after this long with no bytes either way (checked every "
        "quarter of it: the close comes between this and 1.25 times this after the last "
        "byte). Its log line says `close=idle_timeout (5m) passed`. A route may set its "
        "own.",
        default=None, parse=_positive_duration, shown="none")
    max_lifetime: float | None = setting(
        "Close a connection this long after accept, busy or not; its log line says "
        "`close=max_lifetime (24h) reached`. A route may set its own.",
        default=None, parse=_positive_duration, shown="none")
    #: ``[listener.tor]``: an onion service instead of ``endpoint`` (loaded on its own).
    tor: TorSettings | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.connection_burst_per_ip is not None and self.connection_rate_per_ip is None:
            raise ValueError("impossible combination: connection_burst_per_ip needs "
                             "connection_rate_per_ip")

    @property
    def proxy_mode(self) -> ProxyMode:
        """``proxy_protocol`` as applied: an onion listener always reads tor's PROXY line."""
        return "required" if self.tor is not None else self.proxy_protocol

    @property
    def where(self) -> str:
        """The endpoint, or the onion ports, for route tables and messages."""
        if self.tor is not None:
            return "onion:" + ",".join(map(str, self.tor.ports))
        return self.endpoint or "-"


@attrs.frozen
class AdminConfig:
    """
    ``[admin]``: the operator's listener, serving `/metrics` (Prometheus), `/status`
    (a read-only HTML page) and `/health`. Bind it to loopback or a private address:
    it has no authentication.
    """

    endpoint: str = setting(
        "Twisted server endpoint string, e.g. `tcp:9100:interface=127.0.0.1`.",
        parse=parse_server_endpoint,
    )


def _workers(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected a whole number of worker processes, e.g. 2")
    if not 1 <= value <= 256:
        raise ValueError("must be between 1 and 256")
    return value


@attrs.frozen
class GlobalSettings:
    """Top-level keys (before any table)."""

    drain_timeout: float = setting(
        "On stop (SIGTERM, `systemctl stop`), listeners close at once and open "
        "connections get this long to finish; those still open then are closed, and "
        "their log lines say `close=drain_timeout (30s) passed`.",
        default=30.0,
        parse=_positive_duration,
        shown='"30s"',
    )
    splice: bool = setting(
        "On Linux, `forward` routes between plain sockets (`tcp:`, `unix:` backends; not "
        "TLS-terminated or shaped streams) relay kernel-side with `splice(2)` once "
        "detection is done: same bytes, half-close, flow control and byte counts as the "
        "portable relay, less CPU. `false` keeps every relay in user space (so does "
        "`GATEKEEP_SPLICE=0` in the environment). Applies to connections routed after a "
        "reload.",
        default=True,
        parse=expect(bool, "true or false"),
        shown="`true`",
    )
    workers: int | None = setting(
        "Processes serving the listeners. With more than one, a supervising parent binds "
        "every listener (also `systemd:` sockets) and starts this many workers that share "
        "them; it restarts a worker that dies, forwards `SIGHUP` (a changed set of "
        "listeners starts a new generation of workers while the old one drains) and "
        "`SIGTERM`, logs each worker's lines with its name (`[gatekeep.connection#info "
        "worker-N]`, JSON `\"worker\": N`), and serves `[admin]` with every worker's "
        "metrics labelled `worker`. `1` runs everything in one process. Onion listeners "
        "need `1` (with them the default is `1`). Without this key, `$GATEKEEP_WORKERS` "
        "sets the default. See docs/operations.md, *Workers*.",
        default=None,
        parse=_workers,
        shown="number of cores",
    )


@attrs.frozen
class ServiceSettings:
    """``[service.NAME]``: an ordered list of routes with a default."""

    default: str | None = setting(
        "Route taken when no route matches before `detect_timeout` (or when nothing "
        "can match any more). Without it, such connections are rejected.",
        default=None,
        parse=parse_name,
        shown="none",
    )


@attrs.frozen
class RouteSettings:
    """``[[service.NAME.route]]``: the keys of a route besides `match` and its action."""

    name: str = setting("Name of the route, unique within its service.", parse=parse_name)
    connect_timeout: float | None = setting(
        "How long `forward` waits for the backend to accept before giving up "
        "(the client then gets a protocol-appropriate error).",
        default=10.0,
        parse=_positive_duration,
        shown='"10s"',
    )
    access: str | None = setting(
        "An `[access.NAME]` rule asked once this route is chosen, with the detected facts "
        "(after the listener's own rule). A denial closes the connection with a "
        "protocol-appropriate error where one exists.",
        default=None, parse=parse_name, shown="none")
    idle_timeout: float | None = setting(
        "The listener's `idle_timeout` for connections that take this route.",
        default=None, parse=_positive_duration, shown="the listener's")
    max_lifetime: float | None = setting(
        "The listener's `max_lifetime` for connections that take this route (still "
        "counted from accept).",
        default=None, parse=_positive_duration, shown="the listener's")


@attrs.frozen
class Config:
    """A whole validated config file."""

    listeners: tuple[ListenerConfig, ...]
    services: Mapping[str, Service]
    source: str = ""
    warnings: tuple[str, ...] = ()
    admin: AdminConfig | None = None
    settings: GlobalSettings = attrs.field(factory=GlobalSettings)
    #: ``[access.NAME]`` rules (:class:`gatekeep.guard.NamedRule`), by name.
    access: Mapping[str, Any] = attrs.field(factory=dict)
    #: ``[shaper.NAME]`` specs (:class:`gatekeep.shapers.shaping.ShaperSpec`), by name.
    shapers: Mapping[str, Any] = attrs.field(factory=dict)
