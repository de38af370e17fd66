"""
The ``respond`` and ``reject`` actions: answer from config, or refuse, then close.

Neither opens a backend connection, so both are safe defaults for a service's
``default`` route.
"""

from __future__ import annotations

import attrs
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from gatekeep.config.schema import expect, setting
from gatekeep.failures import failure_bytes
from gatekeep.interfaces import ITarget
from gatekeep.values import Inbound

__all__ = ["RejectTarget", "RespondTarget"]


class _WriteAndClose(Protocol):
    """Writes its bytes as soon as it is connected, then closes; ignores input."""

    def __init__(self, data: bytes, reason: str, inbound: Inbound) -> None:
        self.data = data
        self.reason = reason
        self.inbound = inbound

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.inbound.record.close(self.reason)
        if self.data:
            self.inbound.record.bytes_out += len(self.data)
            self.transport.write(self.data)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass


def _text(value: object) -> str:
    return expect(str, "a string")(value)  # type: ignore[no-any-return]


@implementer(ITarget)
@attrs.frozen
class RespondTarget:
    """``respond = { data = "..." }``: write the bytes, then close."""

    data: str = setting(
        "Text written to the client (UTF-8) before closing, e.g. a banner or a short "
        "HTTP response. TOML escapes such as `\\r\\n` work in basic strings.",
        parse=_text,
    )

    def attach(self, inbound: Inbound) -> Protocol:
        return _WriteAndClose(self.data.encode("utf-8"), "responded", inbound)

    def describe(self) -> str:
        shown = self.data if len(self.data) <= 32 else self.data[:29] + "..."
        return f"respond {shown!r}"


@implementer(ITarget)
@attrs.frozen
class RejectTarget:
    """``reject = {}``: close, with a protocol-appropriate error where one exists."""

    def attach(self, inbound: Inbound) -> Protocol:
        data = failure_bytes(inbound.detector, inbound.facts, "refused")
        return _WriteAndClose(data, "rejected", inbound)

    def describe(self) -> str:
        return "reject"
