"""
Writing a small message at once, without waiting for the reactor's next turn.

Twisted's ``transport.write`` queues the bytes and asks the reactor to watch the
socket for writability: two ``epoll_ctl`` calls and one more trip through the event
loop per write, which is a large part of the cost of a small proxied request. When
nothing is queued on a bare socket transport, :func:`send_now` hands the bytes to
the kernel straight away and queues only what the socket did not take, so the order
of bytes and the transport's flow control stay Twisted's. Anything else (TLS,
wrappers, a transport with bytes already queued, an error) takes ``write``.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.protocol import connectionDone

from gatekeep.accepted import AcceptedServer

__all__ = ["PLAIN", "close_now", "send_now"]

#: Transports whose ``socket`` is the connection itself (gatekeep's listeners make
#: AcceptedServer, a tcp.Server).
PLAIN = (tcp.Server, AcceptedServer, tcp.Client, unix.Server, unix.Client)


def send_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending at once what a bare socket accepts."""
    if (data and type(transport) in PLAIN and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport.dataBuffer
            and not transport._tempDataBuffer and not getattr(transport, "TLS", False)):
        sock: socket.socket | None = getattr(transport, "socket", None)
        if sock is not None:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the queued write meets the error and reports it as Twisted does
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


def close_now(transport: Any) -> None:
    """
    ``transport.loseConnection()``, done at once when nothing is queued on a bare socket.

    Twisted's ``loseConnection`` asks the reactor to watch the socket for writability;
    the next turn calls ``doWrite``, which sends the (empty) rest of the buffer (one
    empty ``send``) and only then closes the connection (``shutdown`` and ``close``) and
    tells the protocol. With nothing queued that turn can only close, so it is done
    here: the same ``connectionLost``, the same shutdown and close, no empty send and
    no extra trip through the event loop. Anything else takes ``loseConnection``.
    """
    if (type(transport) in PLAIN and transport.connected and not transport.disconnecting
            and not transport._writeDisconnected and not transport.dataBuffer
            and not transport._tempDataBuffer and not getattr(transport, "TLS", False)
            and not (transport.producer is not None and transport.producerPaused)):
        # (A paused producer would be resumed by that turn instead, and the close wait.)
        transport.disconnecting = True
        transport.connectionLost(connectionDone)
    else:
        transport.loseConnection()
