"""
``[http.SITE]`` and its ``[[http.SITE.route]]`` entries: the validated model.

Names and paths are checked when the config loads (a host pattern that can never
match, a path that is not a prefix of any request-target, a route with both ``to``
and ``respond``...), each error naming its TOML path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import attrs

from gatekeep.config.endpoints import client_endpoint_problem
from gatekeep.config.errors import ConfigError
from gatekeep.config.model import parse_name
from gatekeep.config.schema import key_path, load_table, setting
from gatekeep.config.units import parse_duration, parse_size
from gatekeep.detectors._names import normalise_host
from gatekeep.preamble import ProxyPolicy
from gatekeep.routing import split_host_port

__all__ = ["HTTPRoute", "HTTPSite", "Respond", "load_sites", "site_table"]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VALUE = re.compile(r"^[\t\x20-\x7e]*$")
_PATH = re.compile(r"^[\x21-\x7e]+$")


def _status(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise ValueError("expected an HTTP status code from 200 to 599")
    return value


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise TypeError('expected a table of header names to values, e.g. '
                        '{ "Content-Type" = "application/json" }')
    out = []
    for name, text in value.items():
        if not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name.lower() in ("content-length", "transfer-encoding", "connection"):
            raise ValueError(f"{name!r} is set by gatekeep itself")
        if not isinstance(text, str) or not _VALUE.match(text):
            raise ValueError(f"header {name!r}: expected a string of printable ASCII")
        out.append((name, text.strip()))
    return tuple(out)


def _body(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected a string (sent as UTF-8)")
    return value.encode("utf-8")


@attrs.frozen
class Respond:
    """``respond = { status, headers, body }`` of an HTTP route."""

    status: int = setting("Status code of the answer.", default=200, parse=_status, shown="200")
    headers: tuple[tuple[str, str], ...] = setting(
        "Header fields of the answer, a table of names to values. `Content-Length` "
        "is computed; a `HEAD` request gets the headers without the body.",
        default=(), parse=_headers, shown="`{}`")
    body: bytes = setting("The body, sent as UTF-8.", default=b"", parse=_body, shown='`""`')


def _strings(value: object, what: str) -> list[str]:
    listed: list[object] = list(value) if isinstance(value, list) else [value]
    strings = [v for v in listed if isinstance(v, str) and v]
    if not listed or len(strings) != len(listed):
        raise TypeError(f"expected a non-empty list of {what}")
    return strings


def _canonical(text: str) -> str | None:
    """An IP literal (compressed, IPv6 without brackets) or a DNS name (A-labels)."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return normalise_host(text.rstrip("."))


def _host_pattern(pattern: str) -> tuple[str, int | None]:
    """(canonical name or ``*.suffix``, port or None), or ValueError."""
    wildcard = pattern.startswith("*.")
    body, port = split_host_port(pattern[2:] if wildcard else pattern)
    if pattern.rpartition(":")[2].isdigit() and port is None and not pattern.endswith("]"):
        raise ValueError(f"bad port in {pattern!r}")
    name = _canonical(body) if body else None
    if name is None or (wildcard and ":" in name):
        raise ValueError(f"bad host pattern {pattern!r}: use an exact name, a leading "
                         "'*.' wildcard such as '*.example.org', optionally with ':PORT'")
    if port is not None and not 0 < port <= 65535:
        raise ValueError(f"bad port in {pattern!r}")
    return ("*." if wildcard else "") + name, port


def _hosts(value: object) -> tuple[tuple[str, int | None], ...]:
    return tuple(_host_pattern(p) for p in _strings(value, "host names"))


def _paths(value: object) -> tuple[str, ...]:
    paths = _strings(value, "path prefixes")
    for path in paths:
        if not _PATH.match(path) or not (path.startswith("/") or path == "*"):
            raise ValueError(f"{path!r} is not a path prefix: it starts with '/' and holds "
                             "no spaces or non-ASCII characters (write them %-encoded, as "
                             "clients send them)")
    return tuple(paths)


def _health(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError('expected a path such as "/health"')
    return _paths(value)[0]


def _endpoint(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError('expected a client endpoint string such as "tcp:127.0.0.1:8008"')
    problem = client_endpoint_problem(value)
    if problem:
        raise ValueError(problem + ' (e.g. "tcp:127.0.0.1:8008", "unix:/run/app.sock")')
    return value


def _host_header(value: object) -> str:
    if not isinstance(value, str) or not value or not _PATH.match(value):
        raise ValueError("expected a host name, optionally with :PORT")
    return value


def _max_body(value: object) -> int:
    return parse_size(value)


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def _optional_duration(value: object) -> float | None:
    seconds = parse_duration(value)
    return seconds if seconds > 0 else None


def _trusted(value: object) -> tuple[str, ...]:
    from gatekeep.config.model import ListenerConfig  # its parser, shared

    parse = attrs.fields(ListenerConfig).trusted_proxies.metadata["parse"]
    entries: tuple[str, ...] = parse(value)
    return entries


def _log_path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("expected a file path")
    return value


@attrs.frozen
class HTTPRoute:
    """
    `[[http.SITE.route]]`: tried in order, the first whose `host` and `path` fit the
    request wins; a route with neither is a catch-all. Exactly one of `to` and
    `respond`.
    """

    name: str = setting("Name of the route, unique within its site; shown in the access log.",
                        parse=parse_name)
    host: tuple[tuple[str, int | None], ...] = setting(
        "Host names the request must be for (its Host header, or the authority of an "
        "absolute request-target): exact or `*.` wildcard (never the bare parent), "
        "case-insensitive; `name:PORT` also requires that port, a bare name fits any port.",
        default=(), parse=_hosts, shown="any host")
    path: tuple[str, ...] = setting(
        "Prefixes of the raw request path as sent (no %-decoding, no dot-segment "
        "removal), e.g. `[\"/_matrix\", \"/_synapse/client\"]`.",
        default=(), parse=_paths, shown="any path")
    to: str | None = setting(
        "Client endpoint string of the HTTP/1.1 backend: `tcp:HOST:PORT`, `unix:PATH`, "
        "`tls:NAME:PORT:endpoint=...`.", default=None, parse=_endpoint, shown="none")
    max_body: int | None = setting(
        "Largest request body for this route (bytes or a size such as `\"64MiB\"`); "
        "overrides the site's `max_body`.", default=None, parse=_max_body,
        shown="the site's")
    host_header: str | None = setting(
        "Host header sent to the backend instead of the client's (which is kept by "
        "default; `X-Forwarded-Host` always carries the client's).",
        default=None, parse=_host_header, shown="the client's")
    respond: Respond | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if (self.to is None) == (self.respond is None):
            raise ValueError("a route needs exactly one of `to` (a backend) and `respond`")
        if self.respond is not None and self.host_header is not None:
            raise ValueError("host_header has no use on a respond route")


@attrs.frozen
class HTTPSite:
    """`[http.SITE]`: an HTTP reverse proxy, used by routes with `http = "SITE"`."""

    name: str = setting("The site's name (the table's key).", parse=parse_name)
    health: str | None = setting(
        "A path answered `200 OK` by gatekeep itself, for load balancers and monitors "
        "(exact match, query string ignored), e.g. `\"/health\"`.",
        default=None, parse=_health, shown="none")
    trusted_proxies: tuple[str, ...] = setting(
        "Clients (CIDRs) whose `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` "
        "and `Forwarded` headers are kept and appended to; from anyone else such headers "
        "are removed and replaced with gatekeep's own.", default=(), parse=_trusted,
        shown="`[]`")
    max_body: int = setting(
        "Largest request body (bytes or a size such as `\"1MiB\"`): a larger declared "
        "`Content-Length` is answered `413` at once, a chunked body growing past it "
        "ends the request with `413`.", default=1024 * 1024, parse=_max_body,
        shown='"1MiB"')
    connect_timeout: float = setting(
        "How long to wait for a backend to accept; then `502`.", default=5.0,
        parse=_positive_duration, shown='"5s"')
    keepalive_timeout: float | None = setting(
        "How long a client connection may wait for its next request's head to arrive "
        "whole (from the connection's start, then from the end of each response); then "
        "it is closed. Guards against idle keep-alive connections and heads sent byte by "
        "byte. HTTP/2: how long a connection may have no open stream. `\"0s\"` turns "
        "it off.", default=75.0, parse=_optional_duration, shown='"75s"')
    response_timeout: float = setting(
        "How long to wait for a backend's response head once the request was sent; "
        "then `504`.", default=60.0, parse=_positive_duration, shown='"60s"')
    access_log: str | None = setting(
        "File that gets one line per request in the combined log format, followed by "
        "the upstream time in seconds (`-` when gatekeep answered itself); the client "
        "address is the real one (after a PROXY header).", default=None,
        parse=_log_path, shown="none")
    routes: tuple[HTTPRoute, ...] = attrs.field(default=(), kw_only=True)
    #: ``trusted_proxies`` parsed once (asked on every request).
    policy: ProxyPolicy = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "policy",
                           ProxyPolicy.from_settings("off", self.trusted_proxies))


def _size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}B"


def _host_text(pattern: tuple[str, int | None]) -> str:
    name, port = pattern
    shown = f"[{name}]" if ":" in name and port is not None else name
    return shown + (f":{port}" if port is not None else "")


def site_table(site: HTTPSite) -> list[str]:
    """The site and its routes, for ``gatekeep check``."""
    from gatekeep.config.units import format_duration

    settings = [f"max_body {_size(site.max_body)}",
                f"connect_timeout {format_duration(site.connect_timeout)}",
                f"response_timeout {format_duration(site.response_timeout)}"]
    if site.health is not None:
        settings.insert(0, f"health {site.health}")
    if site.trusted_proxies:
        settings.append(f"trusted_proxies {', '.join(site.trusted_proxies)}")
    if site.access_log is not None:
        settings.append(f"access_log {site.access_log}")
    lines = [f"  http site {site.name} ({'; '.join(settings)})"]
    if not site.routes:
        return lines
    matches = []
    for route in site.routes:
        parts = []
        if route.host:
            parts.append("host=" + ",".join(_host_text(p) for p in route.host))
        if route.path:
            parts.append("path=" + ",".join(route.path))
        matches.append(" ".join(parts) or "(catch-all)")
    width = max(len(r.name) for r in site.routes)
    match_width = max(map(len, matches))
    for number, (route, match) in enumerate(zip(site.routes, matches, strict=True), 1):
        if route.respond is not None:
            action = f"respond {route.respond.status} ({len(route.respond.body)} bytes)"
        else:
            action = str(route.to)
            if route.host_header is not None:
                action += f", Host: {route.host_header}"
        if route.max_body is not None:
            action += f", max_body {_size(route.max_body)}"
        lines.append(f"    {number}. {route.name:<{width}}  {match:<{match_width}}  -> {action}")
    return lines


def _route(table: object, path: str, errors: list[ConfigError]) -> HTTPRoute | None:
    if not isinstance(table, dict):
        errors.append(ConfigError(path, "expected a table"))
        return None
    respond = None
    if "respond" in table:
        respond = load_table(Respond, table["respond"], key_path(path, "respond"), errors)
        if respond is None:
            return None
    plain = {k: v for k, v in table.items() if k != "respond"}
    route: HTTPRoute | None = load_table(HTTPRoute, plain, path, errors, respond=respond)
    return route


def load_sites(raw: object, errors: list[ConfigError]) -> dict[str, HTTPSite]:
    """The ``[http.X]`` tables; problems are appended to ``errors``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(ConfigError("http", "expected a table of sites: [http.NAME]"))
        return {}
    sites: dict[str, HTTPSite] = {}
    for name, table in raw.items():
        path = key_path("http", name)
        if not isinstance(table, dict):
            errors.append(ConfigError(path, "expected a table", f"write it as [http.{name}]"))
            continue
        before = len(errors)
        rpath = key_path(path, "route")
        raw_routes = table.get("route", [])
        if not isinstance(raw_routes, list):
            errors.append(ConfigError(rpath, "expected an array of tables",
                                      f"write [[{rpath}]]"))
            continue
        routes = [_route(t, key_path(rpath, i), errors) for i, t in enumerate(raw_routes)]
        plain: Mapping[str, Any] = {k: v for k, v in table.items() if k != "route"}
        try:
            parse_name(name)
        except ValueError as error:
            errors.append(ConfigError(path, str(error)))
            continue
        site: HTTPSite | None = load_table(HTTPSite, plain, path, errors, name=name,
                                           routes=tuple(r for r in routes if r is not None))
        if site is None or len(errors) > before:
            continue
        seen: set[str] = set()
        for index, route in enumerate(site.routes):
            if route.name in seen:
                errors.append(ConfigError(key_path(key_path(rpath, index), "name"),
                                          f"duplicate route name '{route.name}'"))
            seen.add(route.name)
            if not route.host and not route.path and index < len(site.routes) - 1:
                errors.append(ConfigError(
                    key_path(rpath, index),
                    f"impossible combination: catch-all route '{route.name}' (no host, no "
                    "path) comes before other routes, which can never be taken",
                    "move it last"))
        if not site.routes and site.health is None:
            errors.append(ConfigError(path, "a site needs at least one route",
                                      f"add a [[{rpath}]] table with `to` or `respond`"))
        sites[name] = site
    return sites
