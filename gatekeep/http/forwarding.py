"""
What the proxy decides per request: the route, and the header fields the backend gets.

Forwarding headers follow one rule: from a client in the site's
``trusted_proxies``, ``X-Forwarded-*`` and ``Forwarded`` are kept and the client's
address is appended; from anyone else they are removed and gatekeep's own
replace them, so a client can never choose the address a backend records
(Synapse, for one, takes the leftmost ``X-Forwarded-For`` entry).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

from twisted.internet.address import IPv4Address, IPv6Address

from gatekeep.http.fields import HOP_BY_HOP, NAMES
from gatekeep.http.reader import RequestHead
from gatekeep.http.settings import HTTPRoute, HTTPSite
from gatekeep.preamble import plain_ip
from gatekeep.routing import name_matches

__all__ = ["HOP_BY_HOP", "backend_head", "client_ip", "request_fields", "select", "written"]

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORWARDING: Final = frozenset({
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
    b"forwarded", b"x-real-ip",
})
#: Never passed on from a client that is not a trusted proxy.
_DROPPED: Final = HOP_BY_HOP | _FORWARDING
#: Connection tokens that name no field to drop.
_PLAIN_CONNECTION: Final = frozenset({b"close", b"keep-alive", b"upgrade"})


def _host_fits(pattern: tuple[str, int | None], host: str | None, port: int | None) -> bool:
    name, want_port = pattern
    if host is None:
        return False
    if want_port is not None and port != want_port:
        return False
    return name_matches(name, host)


def _path_of(head: RequestHead) -> bytes:
    path = head.path
    cut = path.find(b"?")
    return path if cut == -1 else path[:cut]


def select(site: HTTPSite, head: RequestHead, default_port: int | None) -> HTTPRoute | None:
    """The first route whose host and path fit ``head`` (None: no route, 404)."""
    port = head.port if head.port is not None else default_port
    path = _path_of(head).decode("ascii")
    for route in site.routes:
        if route.host and not any(_host_fits(p, head.host, port) for p in route.host):
            continue
        if route.path and not any(path.startswith(p) for p in route.path):
            continue
        return route
    return None


def is_health(site: HTTPSite, head: RequestHead) -> bool:
    return site.health is not None and _path_of(head) == site.health.encode("ascii")


def client_ip(address: Any) -> str | None:
    """The client's IP as text (IPv4-mapped IPv6 as IPv4), or None (UNIX sockets...)."""
    if isinstance(address, IPv4Address | IPv6Address):
        return _ip_text(address.host)
    return None


@functools.lru_cache(maxsize=4096)
def _ip_text(host: str) -> str | None:
    ip = plain_ip(host)
    return None if ip is None else str(ip)


def _forwarded_node(ip: str | None) -> str:
    if ip is None:
        return "unknown"
    return f'"[{ip}]"' if ":" in ip else ip


def _forwarded_host(value: bytes) -> str:
    """A token as it is, anything else (``host:port``, ``[v6]``) as a quoted-string."""
    text = value.decode("latin-1")
    if _TOKEN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def request_fields(
    site: HTTPSite, route: HTTPRoute, head: RequestHead, client: Any, scheme: str,
    upgrade: bytes | None,
) -> list[tuple[bytes, bytes]]:
    """
    The header fields for the backend: the client's, minus hop-by-hop ones, with
    Host (kept or ``host_header``) and the forwarding fields.
    """
    trusted = bool(site.trusted_proxies) and site.policy.trusts(client)
    listed = head.connection_tokens - _PLAIN_CONNECTION
    out: list[tuple[bytes, bytes]] = []
    previous: dict[bytes, list[bytes]] = {}
    host_value = head.host_field
    for name, value in head.fields:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in listed:
            continue
        if lower in _FORWARDING:
            if trusted:
                previous.setdefault(lower, []).append(value)
            continue
        if lower == b"host" and route.host_header is not None:
            value = route.host_header.encode("ascii")
        out.append((name, value))
    if host_value is None:
        # An HTTP/1.0 client without Host: the backend speaks HTTP/1.1 and needs one.
        fallback = route.host_header or (head.host or "localhost")
        out.insert(0, (b"Host", fallback.encode("ascii", "replace")))
    if head.chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    if upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade))
    ip = client_ip(client)
    ip_text = ip if ip is not None else "unknown"
    xff = b", ".join(previous.get(b"x-forwarded-for", []))
    out.append((b"X-Forwarded-For", (xff + b", " if xff else b"") + ip_text.encode("ascii")))
    proto = previous.get(b"x-forwarded-proto", [scheme.encode("ascii")])
    out.append((b"X-Forwarded-Proto", proto[0]))
    sent_host = host_value if host_value is not None else (head.host or "").encode("ascii")
    forwarded_host = previous.get(b"x-forwarded-host", [sent_host])
    if forwarded_host[0]:
        out.append((b"X-Forwarded-Host", forwarded_host[0]))
    for name in (b"x-forwarded-port", b"x-real-ip"):
        for value in previous.get(name, []):
            out.append((name.title(), value))
    element = f"for={_forwarded_node(ip)};proto={scheme}"
    if sent_host:
        element += f";host={_forwarded_host(sent_host)}"
    earlier = b", ".join(previous.get(b"forwarded", []))
    out.append((b"Forwarded", (earlier + b", " if earlier else b"") + element.encode("latin-1")))
    return out


def written(head: RequestHead, fields: list[tuple[bytes, bytes]]) -> bytes:
    """The request head for the backend: ``head``'s request line (HTTP/1.1) and ``fields``."""
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    for name, value in fields:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


@functools.lru_cache(maxsize=4096)
def _forwarding_lines(ip: str | None, scheme: str, host: bytes) -> bytes:
    """
    The forwarding fields (and the head's end) for a client that is not a trusted
    proxy: they depend only on its address, the scheme and the Host it sent, which a
    kept-alive connection repeats, so they are written once.
    """
    out = [(b"X-Forwarded-For", (ip if ip is not None else "unknown").encode("ascii")),
           (b"X-Forwarded-Proto", scheme.encode("ascii"))]
    if host:
        out.append((b"X-Forwarded-Host", host))
    element = f"for={_forwarded_node(ip)};proto={scheme}"
    if host:
        element += f";host={_forwarded_host(host)}"
    out.append((b"Forwarded", element.encode("latin-1")))
    return b"".join(name + b": " + value + b"\r\n" for name, value in out) + b"\r\n"


def backend_head(
    site: HTTPSite, route: HTTPRoute, head: RequestHead, client: Any, scheme: str,
    upgrade: bytes | None,
) -> bytes:
    """
    ``written(head, request_fields(...))`` for the backend, in one pass when the client
    is not a trusted proxy, sent a Host and lists no field in ``Connection``: its
    fields are copied minus hop-by-hop and forwarding ones, and the forwarding fields
    come from :func:`_forwarding_lines`. The bytes are the same either way.
    """
    host = head.host_field
    connection = head.connection_tokens
    if host is None or (connection and not connection <= _PLAIN_CONNECTION) or (
            site.trusted_proxies and site.policy.trusts(client)):
        return written(head, request_fields(site, route, head, client, scheme, upgrade))
    rewrite = route.host_header
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    names = NAMES
    for name, value in head.fields:
        lower = names.get(name) or name.lower()
        if lower in _DROPPED:
            continue
        if lower == b"host" and rewrite is not None:
            value = rewrite.encode("ascii")
        parts += (name, b": ", value, b"\r\n")
    if head.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    parts.append(_forwarding_lines(client_ip(client), scheme, host))
    return b"".join(parts)
