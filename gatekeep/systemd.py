"""
``sd_notify``: tell systemd (or whatever set ``$NOTIFY_SOCKET``) how we are doing.

The protocol is one datagram of ``KEY=VALUE`` lines to the UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). It is small
enough to speak directly; a library would add a dependency for ten lines.
Without ``$NOTIFY_SOCKET`` every call does nothing, so gatekeep behaves the same
outside systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from twisted.logger import Logger

__all__ = ["notify", "reloading_message"]

log = Logger()


def _address(path: str) -> str | bytes | None:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if path.startswith("/"):
        return path
    return None  # vsock and other transports systemd may name: not for us


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send ``message`` (``"READY=1"``, ``"STOPPING=1\\nSTATUS=..."``) if systemd asked
    for notifications. True if it was sent. Never raises: a notification that
    cannot be delivered must not take the gateway down.
    """
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    address = _address(path) if path else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # A datagram to a local socket either queues at once or fails: no waiting.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as error:
        log.warn("cannot notify systemd at {path}: {error}", path=path, error=str(error))
        return False
    return True


def reloading_message() -> str:
    """``RELOADING=1`` with the timestamp systemd's ``Type=notify-reload`` expects."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return f"RELOADING=1\nMONOTONIC_USEC={usec}"
