"""
An MQTT detector for gatekeep, shipped as its own distribution.

It recognises the CONNECT packet an MQTT client sends first (MQTT 3.1, 3.1.1 and 5)
and reports what routes may test::

    [[service.edge.route]]
    name = "broker"
    match.mqtt = { level = [4, 5] }
    forward = { to = "tcp:127.0.0.1:11883" }

It is registered in the ``gatekeep.detectors`` entry-point group under the name
``mqtt`` (see ``setup.cfg``), which is the whole of the wiring: gatekeep finds,
verifies and uses it exactly like its built-in detectors.
"""

from __future__ import annotations

from typing import Final

from zope.interface import implementer

from gatekeep.interfaces import IDetector
from gatekeep.values import FactValue, Match, NeedMore, NoMatch

__all__ = ["MAX_CLIENT_ID", "MQTTDetector", "client_id_text"]

#: The first byte of a CONNECT packet: packet type 1, flags 0 (anything else is malformed).
CONNECT: Final = 0x10
#: Protocol name -> the protocol levels that go with it.
PROTOCOLS: Final = {b"MQTT": frozenset({4, 5}), b"MQIsdp": frozenset({3})}
#: Client identifiers longer than this (in characters) are reported as None.
MAX_CLIENT_ID: Final = 256


class _Undecided(Exception):
    """The prefix ends before the field being read does."""


class _Malformed(Exception):
    """Not a well-formed CONNECT packet; the message says why."""


def client_id_text(raw: bytes) -> str | None:
    """
    The client identifier as text, or None.

    None when the client sent none (an empty identifier asks the broker to assign
    one), or when it is not UTF-8, not printable (control characters, line breaks,
    invisible format characters) or longer than :data:`MAX_CLIENT_ID` characters:
    bytes from the network never reach routes or logs unvalidated.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text or len(text) > MAX_CLIENT_ID or not text.isprintable():
        return None
    return text


class _Reader:
    """
    Reads fields from the prefix, bounded by the packet's end once it is known.

    A field reaching past the packet's end is malformed, whatever the prefix holds;
    a field reaching past the prefix (but not the packet) is undecided. Checking in
    that order makes every verdict depend on the bytes alone, never on how many of
    them have arrived.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end: int | None = None  # the packet's end, once the remaining length is read

    def take(self, count: int, what: str) -> bytes:
        stop = self.pos + count
        if self.end is not None and stop > self.end:
            raise _Malformed(f"{what} runs past the packet's remaining length")
        if stop > len(self.data):
            raise _Undecided
        field = self.data[self.pos:stop]
        self.pos = stop
        return field

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def varint(self, what: str) -> int:
        """MQTT's variable byte integer: 1-4 bytes, 7 bits each, least significant first."""
        value = 0
        for index in range(4):
            byte = self.byte(what)
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if index and not byte:
                    raise _Malformed(f"{what} is not minimally encoded")
                return value
        raise _Malformed(f"{what} is longer than 4 bytes")

    def expect(self, expected: bytes, what: str) -> None:
        """Like ``take``, but refuses as soon as an arrived byte differs."""
        stop = self.pos + len(expected)
        if self.end is not None and stop > self.end:
            raise _Malformed(f"{what} runs past the packet's remaining length")
        arrived = self.data[self.pos:stop]
        if not expected.startswith(arrived):
            raise _Malformed(f"{what} is not {expected.decode('ascii')!r}")
        self.take(len(expected), what)


def _check_flags(flags: int, level: int) -> None:
    will = flags & 0x04
    will_qos = (flags >> 3) & 0x03
    if will_qos == 3:
        raise _Malformed("the Will QoS is 3")
    if level >= 4:
        if flags & 0x01:
            raise _Malformed("the reserved connect flag is set")
        if not will and (will_qos or flags & 0x20):
            raise _Malformed("Will QoS or Will Retain is set without the Will flag")
    if level == 4 and flags & 0x40 and not flags & 0x80:
        raise _Malformed("a password without a user name (MQTT 3.1.1)")


@implementer(IDetector)
class MQTTDetector:
    """
    Matches an MQTT CONNECT packet.

    Facts:

    - ``protocol_name``: ``"MQTT"`` (levels 4 and 5, that is MQTT 3.1.1 and 5) or
      ``"MQIsdp"`` (level 3, MQTT 3.1); other pairings do not match.
    - ``level``: the protocol level, an int (3, 4 or 5).
    - ``client_id``: the client identifier as validated text (see
      :func:`client_id_text`), or None. A CONNECT whose MQTT 5 properties push the
      identifier beyond ``max_prefix`` still matches, with ``client_id`` None.

    The fixed header must be exactly 0x10 and the remaining length a minimally
    encoded variable byte integer of 1-4 bytes; every field must fit within it.
    """

    name: Final = "mqtt"
    max_prefix: Final = 2048
    #: The keys a route's ``match.mqtt`` table may test (gatekeep checks them at load).
    facts: Final = ("protocol_name", "level", "client_id")

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        reader = _Reader(prefix[: self.max_prefix])
        facts: dict[str, FactValue] = {}
        try:
            self._header(reader, facts)
        except _Undecided:
            return NeedMore()
        except _Malformed as error:
            return NoMatch(str(error))
        # From here on this is MQTT: what remains only decides the client_id fact.
        try:
            self._client_id(reader, facts)
        except _Undecided:
            if len(prefix) < self.max_prefix:
                return NeedMore()
            facts["client_id"] = None
        except _Malformed as error:
            return NoMatch(str(error))
        return Match(facts=facts)

    def _header(self, reader: _Reader, facts: dict[str, FactValue]) -> None:
        if reader.byte("the fixed header") != CONNECT:
            raise _Malformed("not an MQTT CONNECT packet")
        remaining = reader.varint("the remaining length")
        reader.end = reader.pos + remaining
        size = reader.u16("the protocol name's length")
        name = next((n for n in PROTOCOLS if len(n) == size), None)
        if name is None:
            raise _Malformed(f"a protocol name of {size} bytes is neither MQTT nor MQIsdp")
        reader.expect(name, "the protocol name")
        level = reader.byte("the protocol level")
        if level not in PROTOCOLS[name]:
            raise _Malformed(f"protocol {name.decode('ascii')} has no level {level}")
        _check_flags(reader.byte("the connect flags"), level)
        reader.take(2, "the keep alive")
        facts["protocol_name"] = name.decode("ascii")
        facts["level"] = level

    def _client_id(self, reader: _Reader, facts: dict[str, FactValue]) -> None:
        if facts["level"] == 5:
            reader.take(reader.varint("the properties' length"), "the properties")
        raw = reader.take(reader.u16("the client identifier's length"), "the client identifier")
        facts["client_id"] = client_id_text(raw)
