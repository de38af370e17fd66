"""Bytes of HTTP/1.1 responses that gatekeep writes itself."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

__all__ = ["reason_of", "response_head", "simple_body"]

_REASONS: Final = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def reason_of(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def simple_body(status: int, detail: str = "") -> bytes:
    """A short text body: ``502 Bad Gateway`` and, if given, why."""
    text = f"{status} {reason_of(status).decode('ascii')}"
    return (text + (f": {detail}" if detail else "") + "\n").encode("utf-8", "replace")


def response_head(
    status: int, reason: bytes, fields: list[tuple[bytes, bytes]],
) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts += [name + b": " + value + b"\r\n" for name, value in fields]
    parts.append(b"\r\n")
    return b"".join(parts)
