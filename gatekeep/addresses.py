"""How addresses are written in logs and route tables."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

__all__ = ["format_address"]


def format_address(address: IAddress | object | None) -> str:
    """``1.2.3.4:5``, ``[::1]:5``, ``unix:/path`` (``unix:`` alone for an unnamed peer)."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        raw = address.name
        name = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
        return f"unix:{name or ''}"
    return str(address) if address is not None else "-"
