"""
Telling a peer's reset from its clean end when the kernel's event did not say.

A reset peer's RST can reach the event loop as ``EPOLLERR`` (or ``EPOLLHUP``)
without ``EPOLLIN``: Linux's ``tcp_poll`` runs without the socket's lock, and while
the kernel handles the RST it has set the socket's error but not yet shut the
socket down (it purges the send queue in between). Twisted's poll reactors take
that, on a descriptor being read, for a clean end of stream, without reading, so
the log would say "closed" (or blame the other side) for a reset. gatekeep's event
loop (:mod:`gatekeep.eventloop`) asks :func:`stream_error` before it reports such
a hang-up, for every reader including wrapped (TLS) streams; the relay and the
splicer ask too, which covers Twisted's own reactor (``GATEKEEP_EVENTLOOP=twisted``).
"""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["stream_error"]

_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


def stream_error(sock: Any) -> int:
    """
    The error a read of ``sock`` would report now (``errno``), 0 if it would read
    bytes, the end of the stream, or nothing yet. Nothing is consumed but the error.
    Peeking tells a reset from an end as a read would: a FIN received before the RST
    still reads as the end of the stream.
    """
    try:
        sock.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as error:
        return error.errno or 0
    return 0
