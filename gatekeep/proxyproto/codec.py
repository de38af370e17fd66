"""
One entry point for both versions: tell them apart, parse, build.

The version is told by the signature alone (``PROXY`` for v1, the 12-byte block
for v2), as the spec prescribes; nothing is guessed from what follows.
"""

from __future__ import annotations

from gatekeep.proxyproto.model import Incomplete, NotProxy, ParseResult, ProxyHeader
from gatekeep.proxyproto.v1 import V1_SIGNATURE, build_v1, parse_v1
from gatekeep.proxyproto.v2 import V2_SIGNATURE, build_v2, parse_v2

__all__ = ["build", "has_signature", "parse"]


def has_signature(data: bytes) -> bool | None:
    """
    Whether ``data`` starts with a PROXY signature: True, False, or None while
    ``data`` is a strict prefix of one (a few more bytes will tell).
    """
    undecided = False
    for signature in (V1_SIGNATURE, V2_SIGNATURE):
        size = min(len(data), len(signature))
        if data[:size] == signature[:size]:
            if size == len(signature):
                return True
            undecided = True
    return None if undecided else False


def parse(data: bytes) -> ParseResult:
    """
    Parse the PROXY header (v1 or v2) at the start of ``data``.

    A pure function of the bytes so far: it answers the same however they were
    split, :class:`Incomplete` until the header is whole, and never looks past
    the header's own limits (107 bytes for v1, :data:`~gatekeep.proxyproto.v2.MAX_V2_LENGTH`
    for v2). Never raises.
    """
    first = parse_v2(data)
    if not isinstance(first, NotProxy):
        return first
    second = parse_v1(data)
    if isinstance(second, NotProxy) and not data:
        return Incomplete()
    return second


def build(header: ProxyHeader) -> bytes:
    """The bytes of ``header`` in its ``version``; ValueError if it cannot be expressed."""
    if header.version == 1:
        if header.tlvs:
            raise ValueError("version 1 has no TLVs")
        if header.command.name != "PROXY":
            raise ValueError("version 1 has no LOCAL command (send UNKNOWN instead)")
        return build_v1(header.family, header.source, header.destination)
    if header.version == 2:
        return build_v2(header)
    raise ValueError(f"no PROXY protocol version {header.version}")
