"""
Header field names checked once: both readers see the same few names on every message.

A name is a token (RFC 9110 5.6.2). :func:`field_name` answers its lower-case form,
or None when it is not a token; the answer for a valid name is remembered (up to
:data:`MAX_NAMES` names per process), so a kept-alive connection's fields cost one
dictionary look-up each instead of a regex match and a ``lower()``.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["HOP_BY_HOP", "MAX_NAMES", "NAMES", "NOT_PASSED", "field_name"]

#: Fields about one connection (RFC 9110 7.6.1), never forwarded as they are.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"http2-settings",
})
#: Response fields never passed on as they are (gatekeep writes its own framing).
NOT_PASSED: Final = HOP_BY_HOP | {b"content-length"}

#: How many distinct valid names are remembered; past it, names are checked each time.
MAX_NAMES: Final = 4096

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: Valid names seen so far -> their lower-case form. Read with ``NAMES.get(name)``
#: first; :func:`field_name` when that gives None.
NAMES: Final[dict[bytes, bytes]] = {}


def field_name(name: bytes) -> bytes | None:
    """``name`` in lower case if it is a token, else None."""
    lower = NAMES.get(name)
    if lower is not None:
        return lower
    if _TOKEN.fullmatch(name) is None:
        return None
    lower = name.lower()
    if len(NAMES) < MAX_NAMES:
        NAMES[name] = lower
    return lower
