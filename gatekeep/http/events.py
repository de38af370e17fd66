"""
The markers the sans-IO readers (requests and responses) return besides heads and
body bytes: one set, so both sides of the proxy speak the same events.
"""

from __future__ import annotations

from typing import Final

__all__ = ["END", "NEED_DATA", "PAUSED", "Marker"]


class Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The message's body is complete.
END: Final = Marker("END")
#: Nothing more can be read until more bytes arrive.
NEED_DATA: Final = Marker("NEED_DATA")
#: The request reader waits for ``start_next`` before the next request.
PAUSED: Final = Marker("PAUSED")
