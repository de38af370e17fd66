"""
Protocol-appropriate last words for a client we cannot serve.

When a route rejects a connection or its backend is down, a client should learn
why in its own protocol (a TLS alert, an XMPP stream error, an HTTP status)
instead of seeing a bare close it may retry forever. Unknown protocols (plugins,
SSH, nothing detected) get a plain close.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from xml.sax.saxutils import quoteattr

from gatekeep.values import FactValue

__all__ = ["FailureKind", "failure_bytes"]

#: refused: no route / a reject route; unavailable: the backend could not be
#: reached; timeout: the backend did not answer in time; denied: an access rule
#: refused the client.
FailureKind = Literal["refused", "unavailable", "timeout", "denied"]

# TLS alert records (level fatal=2). Record version 0x0301 is what servers use
# before a version is agreed; every TLS client accepts it.
# refused: unrecognized_name (112); denied: access_denied (49); otherwise
# internal_error (80).
_TLS_ALERTS = {"refused": 112, "unavailable": 80, "timeout": 80, "denied": 49}

_XMPP_ERRORS = {
    "refused": "host-unknown",
    "unavailable": "remote-connection-failed",
    "timeout": "remote-connection-failed",
    "denied": "policy-violation",
}

_HTTP_STATUS = {
    "refused": (421, "Misdirected Request"),
    "unavailable": (502, "Bad Gateway"),
    "timeout": (504, "Gateway Timeout"),
    "denied": (403, "Forbidden"),
}


def _tls(kind: FailureKind) -> bytes:
    return bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, _TLS_ALERTS[kind]])


def _xmpp(kind: FailureKind, facts: Mapping[str, FactValue]) -> bytes:
    ns = facts.get("ns")
    ns = ns if ns in ("jabber:client", "jabber:server") else "jabber:client"
    to = facts.get("to")
    sender = f" from={quoteattr(to)}" if isinstance(to, str) else ""
    return (
        "<?xml version='1.0'?>"
        f"<stream:stream xmlns='{ns}' xmlns:stream='http://etherx.jabber.org/streams'"
        f" id='gatekeep-error' version='1.0'{sender}>"
        f"<stream:error><{_XMPP_ERRORS[kind]} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        "</stream:error></stream:stream>"
    ).encode()


def _http(kind: FailureKind, facts: Mapping[str, FactValue]) -> bytes:
    if facts.get("version") == "2":
        return b""  # HTTP/2 prior knowledge: a close is all we can say without framing
    status, text = _HTTP_STATUS[kind]
    body = f"{status} {text}\n".encode()
    return (
        f"HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def failure_bytes(
    protocol: str | None, facts: Mapping[str, FactValue], kind: FailureKind
) -> bytes:
    """What to write before closing a client of ``protocol`` (empty: just close)."""
    if protocol == "tls":
        return _tls(kind)
    if protocol == "xmpp":
        return _xmpp(kind, facts)
    if protocol == "http":
        return _http(kind, facts)
    return b""
