"""
The per-request access log: the combined format, then the upstream time.

    203.0.113.7 - - [06/Dec/2026:23:10:00 +0000] "GET /_matrix/client/versions HTTP/1.1"
        200 1234 "-" "curl/7.88.1" 0.004

(one line in the file). A request refused before its head could be read (400 for a
malformed or smuggling head) is logged with ``"-"`` as its request line.

The address is the real client's (a trusted PROXY header's source, if any); the
last field is the seconds from the backend connection being asked for to the
response's end, or ``-`` when gatekeep answered itself.
"""

from __future__ import annotations

import time
from typing import IO

from twisted.logger import Logger

__all__ = ["AccessLog", "combined_line"]

log = Logger()


def _quoted(value: bytes | None) -> str:
    if not value:
        return "-"
    text = value.decode("latin-1")
    return "".join(c if 0x20 <= ord(c) < 0x7f and c not in '"\\' else f"\\x{ord(c):02x}"
                   for c in text)


def combined_line(
    client: str, when: float, method: bytes, target: bytes, version: bytes, status: int,
    size: int, referer: bytes | None, agent: bytes | None, upstream: float | None,
) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(when))
    request = (f"{_quoted(method)} {_quoted(target)} HTTP/{version.decode('ascii')}"
               if method else "-")  # no method: a request refused before its head was read
    upstream_text = "-" if upstream is None else f"{upstream:.3f}"
    return (f'{client} - - [{stamp}] "{request}" {status} {size} "{_quoted(referer)}" '
            f'"{_quoted(agent)}" {upstream_text}\n')


class AccessLog:
    """Appends lines to a file, opened on first use (so a reload reopens it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._broken = False

    def write(self, line: str) -> None:
        if self._broken:
            return
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._file.write(line)
        except OSError as error:
            self._broken = True
            log.error("access log {path} cannot be written: {error}; no more lines go there",
                      path=self.path, error=error)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
