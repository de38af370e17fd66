"""
Validation of the names detectors report (SNI, HTTP Host, XMPP ``to``).

Routes compare these facts with the names in the config (see
:func:`gatekeep.routing.name_matches`), so every detector must hand over names in
one canonical spelling: ASCII (internationalised labels as A-labels, ``xn--...``),
lower case, without the trailing dot. IP literals are canonicalised with
:mod:`ipaddress`, so ``2001:DB8:0::1`` and ``2001:db8::1`` are one address.

A name that fails validation is reported as None, never as the raw bytes: a route
must not be able to match a name the client could spell in two ways, and logs must
not carry control characters a client chose.
"""

from __future__ import annotations

import ipaddress
import string

import idna

__all__ = ["normalise_dns_name", "normalise_host", "valid_dns_name"]

#: RFC 1035 §2.3.4 limits a name to 255 octets on the wire: 253 characters as text.
MAX_NAME = 253
MAX_LABEL = 63
# Letters, digits and hyphen (RFC 1123), plus underscore: not a host-name character,
# but common in internal names and harmless for routing, and TLS stacks accept it.
_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
# Unicode input longer than this cannot become a valid name (an A-label is never
# shorter than its U-label); refusing early keeps IDNA processing cheap.
_MAX_UNICODE_INPUT = 4 * MAX_NAME


def _valid_label(label: str) -> bool:
    return (
        0 < len(label) <= MAX_LABEL
        and set(label) <= _LABEL_CHARS
        and not label.startswith("-")
        and not label.endswith("-")
    )


def valid_dns_name(text: str) -> bool:
    """
    Whether ``text`` is an ASCII host name (one trailing dot allowed, any case).

    The last label may not be all digits (RFC 3696 §2), so a dotted-quad IPv4
    address is never mistaken for a name. A-labels (``xn--``) are checked only for
    their characters, not decoded.
    """
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > MAX_NAME or not text.isascii():
        return False
    labels = text.split(".")
    if labels[-1].isdigit():
        return False
    return all(_valid_label(label) for label in labels)


def normalise_dns_name(raw: bytes | str) -> str | None:
    """
    The canonical spelling of a host name, or None if it is not one.

    ``bytes`` are a name as carried on the wire (TLS SNI, HTTP Host): ASCII only.
    ``str`` may also hold Unicode labels (an XMPP domainpart, RFC 7622): they are
    mapped with UTS #46 and encoded to A-labels (IDNA 2008).
    """
    if isinstance(raw, bytes):
        if not raw.isascii():
            return None
        text = raw.decode("ascii")
    else:
        text = raw
    if not text.isascii():
        if len(text) > _MAX_UNICODE_INPUT:
            return None
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except ValueError:  # idna.IDNAError and UnicodeError are ValueErrors
            return None
    if not valid_dns_name(text):
        return None
    return text.rstrip(".").lower()


def normalise_host(text: str) -> str | None:
    """
    A host name or IP literal in canonical spelling, or None.

    IPv6 literals must be bracketed (``[::1]``, as in URIs and XMPP domainparts);
    they are reported without brackets. IPv4 literals must be four decimal octets
    without leading zeros. Zone identifiers and IPvFuture literals are refused.
    """
    if text.startswith("["):
        if not text.endswith("]") or "%" in text:
            return None
        try:
            return ipaddress.IPv6Address(text[1:-1]).compressed
        except ValueError:
            return None
    if text and all(c.isdigit() or c == "." for c in text) and text.isascii():
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            return None
    return normalise_dns_name(text)
