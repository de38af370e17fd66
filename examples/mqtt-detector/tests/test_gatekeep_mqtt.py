"""
Tests for the MQTT detector: real clients' CONNECT packets, every split, hostile bytes.

The packets marked "mosquitto_pub" were captured from mosquitto_pub 2.0.11
(``mosquitto_pub -V VERSION -i gk-sensor-1 -t t -m x`` against a listening socket).
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from gatekeep_mqtt import MAX_CLIENT_ID, MQTTDetector, client_id_text
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyClass, verifyObject

from gatekeep.interfaces import IDetector
from gatekeep.values import Match, NeedMore, NoMatch

Verdict = Match | NoMatch | NeedMore

#: mosquitto_pub -V mqttv311 -i gk-sensor-1
MQTT311 = bytes.fromhex("101700044d5154540402003c000b676b2d73656e736f722d31")
#: mosquitto_pub -V mqttv5 -i gk-sensor-1 (empty properties)
MQTT5 = bytes.fromhex("101b00044d5154540502003c03210014000b676b2d73656e736f722d31")
#: mosquitto_pub -V mqttv31 -i gk-sensor-1
MQTT31 = bytes.fromhex("101900064d51497364700302003c000b676b2d73656e736f722d31")
#: mosquitto_pub -V mqttv311 -u alice -P s3cret --will-topic gone --will-qos 1 ...
MQTT311_WILL = bytes.fromhex(
    "103100044d51545404ce003c000b676b2d73656e736f722d310004676f6e65000362796500"
    "05616c6963650006733363726574"
)
#: mosquitto_pub -V mqttv5 -D connect session-expiry-interval 3600
#: -D connect user-property site lab ...
MQTT5_PROPERTIES = bytes.fromhex(
    "102c00044d5154540502003c141100000e102600047369746500036c6162210014000b676b2d73656e736f"
    "722d31"
)
#: mosquitto_pub -V mqttv311 without -i: an empty identifier, the broker assigns one
MQTT311_NO_ID = bytes.fromhex("100c00044d5154540402003c0000")

GOOD: dict[str, tuple[bytes, dict[str, object]]] = {
    "3.1.1": (MQTT311, {"protocol_name": "MQTT", "level": 4, "client_id": "gk-sensor-1"}),
    "5": (MQTT5, {"protocol_name": "MQTT", "level": 5, "client_id": "gk-sensor-1"}),
    "3.1": (MQTT31, {"protocol_name": "MQIsdp", "level": 3, "client_id": "gk-sensor-1"}),
    "will+login": (
        MQTT311_WILL, {"protocol_name": "MQTT", "level": 4, "client_id": "gk-sensor-1"}),
    "5+properties": (
        MQTT5_PROPERTIES, {"protocol_name": "MQTT", "level": 5, "client_id": "gk-sensor-1"}),
    "no id": (MQTT311_NO_ID, {"protocol_name": "MQTT", "level": 4, "client_id": None}),
}

#: Where a packet with more payload after the client identifier is decided.
DECIDED_AT = {"will+login": 2 + 10 + 2 + len(b"gk-sensor-1")}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def connect(
    name: bytes = b"MQTT", level: int = 4, flags: int = 0x02, client_id: bytes = b"c1",
    properties: bytes | None = None, payload_rest: bytes = b"", length: int | None = None,
) -> bytes:
    """A CONNECT packet built field by field (``length`` overrides the remaining length)."""
    body = len(name).to_bytes(2, "big") + name + bytes([level, flags]) + b"\x00\x3c"
    if properties is not None:
        body += varint(len(properties)) + properties
    body += len(client_id).to_bytes(2, "big") + client_id + payload_rest
    return b"\x10" + varint(len(body) if length is None else length) + body


@pytest.fixture
def detector() -> MQTTDetector:
    return MQTTDetector()


def test_provides_idetector(detector: MQTTDetector) -> None:
    assert verifyClass(IDetector, MQTTDetector)
    assert verifyObject(IDetector, detector)
    assert detector.name == "mqtt"
    assert isinstance(detector.max_prefix, int) and detector.max_prefix > 0


def test_entry_point_names_the_class() -> None:
    config = configparser.ConfigParser()
    config.read(Path(__file__).parent.parent / "setup.cfg")
    lines = config["options.entry_points"]["gatekeep.detectors"].strip().splitlines()
    assert lines == ["mqtt = gatekeep_mqtt:MQTTDetector"]


@pytest.mark.parametrize("case", sorted(GOOD))
def test_real_clients_match(detector: MQTTDetector, case: str) -> None:
    data, facts = GOOD[case]
    verdict = detector.detect(data)
    assert isinstance(verdict, Match)
    assert dict(verdict.facts) == facts
    assert verdict.consumed == 0
    assert type(verdict.facts["level"]) is int


@pytest.mark.parametrize("case", sorted(GOOD))
def test_every_prefix_split(detector: MQTTDetector, case: str) -> None:
    """Any split into segments is a sequence of prefixes: undecided, then the final verdict."""
    data, _ = GOOD[case]
    final = detector.detect(data)
    verdicts = [detector.detect(data[:size]) for size in range(len(data) + 1)]
    decided = verdicts.index(final)
    assert verdicts[:decided] == [NeedMore()] * decided
    assert verdicts[decided:] == [final] * (len(data) + 1 - decided)
    # It decides once it has the client identifier (the Will and the credentials after
    # it change no fact): for a packet that ends there, at its very last byte.
    assert decided == DECIDED_AT.get(case, len(data))
    # Bytes after the CONNECT (a PUBLISH sent at once, say) change nothing.
    assert detector.detect(data + b"\x30\x05\x00\x01tx") == final


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x20\x02\x00\x00", "not an MQTT CONNECT"),
        (b"\x11" + MQTT311[1:], "not an MQTT CONNECT"),
        (b"\x16\x03\x01\x02\x00\x01", "not an MQTT CONNECT"),
        (b"GET / HTTP/1.1\r\n", "not an MQTT CONNECT"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an MQTT CONNECT"),
        (b"<?xml version='1.0'?>", "not an MQTT CONNECT"),
        (b"\x10\xff\xff\xff\xff\x01", "longer than 4 bytes"),
        (b"\x10\x80\x00", "not minimally encoded"),
        (b"\x10\x8c\x00" + MQTT311_NO_ID[2:], "not minimally encoded"),
        (connect(name=b"MQTX"), "is not 'MQTT'"),
        (connect(name=b"MQIsdq", level=3), "is not 'MQIsdp'"),
        (connect(name=b"MQTT5"), "neither MQTT nor MQIsdp"),
        (connect(name=b"MQTT", level=3), "has no level 3"),
        (connect(name=b"MQTT", level=6), "has no level 6"),
        (connect(name=b"MQIsdp", level=4), "has no level 4"),
        (connect(flags=0x03), "reserved connect flag"),
        (connect(flags=0x1C), "Will QoS is 3"),
        (connect(flags=0x08), "without the Will flag"),
        (connect(flags=0x22), "without the Will flag"),
        (connect(flags=0x42), "a password without a user name"),
        (connect(client_id=b"abc", length=14), "client identifier runs past"),
        (connect(length=5), "runs past the packet's remaining length"),
        (connect(level=5, properties=b"\x11\x00\x00\x00\x0a", length=12), "properties"),
    ],
)
def test_not_mqtt(detector: MQTTDetector, data: bytes, reason: str) -> None:
    verdict = detector.detect(data)
    assert isinstance(verdict, NoMatch)
    assert reason in verdict.reason
    for size in range(len(data)):  # refusing early is fine, changing its mind is not
        assert detector.detect(data[:size]) in (NeedMore(), verdict)


def test_password_without_user_name_is_fine_in_mqtt5(detector: MQTTDetector) -> None:
    verdict = detector.detect(connect(level=5, flags=0x42, properties=b""))
    assert isinstance(verdict, Match)


def test_rejects_early(detector: MQTTDetector) -> None:
    """Non-MQTT bytes are refused at the first byte that cannot belong to a CONNECT."""
    assert isinstance(detector.detect(b"\x10\x10\x00\x04MQ"), NeedMore)
    assert isinstance(detector.detect(b"\x10\x10\x00\x04MX"), NoMatch)
    assert isinstance(detector.detect(b"\x10\x10\x00\x05"), NoMatch)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"sensor-01", "sensor-01"),
        ("capteur-é".encode(), "capteur-é"),
        (b"with space", "with space"),
        (b"", None),
        (b"\xff\xfe", None),
        (b"line\nbreak", None),
        (b"nul\x00", None),
        (b"esc\x1b[31m", None),
        ("zero\u200bwidth".encode(), None),
        (b"\xed\xa0\x80", None),  # a UTF-16 surrogate, not valid UTF-8
        (b"x" * MAX_CLIENT_ID, "x" * MAX_CLIENT_ID),
        (b"x" * (MAX_CLIENT_ID + 1), None),
    ],
)
def test_client_id_is_validated(detector: MQTTDetector, raw: bytes, text: str | None) -> None:
    assert client_id_text(raw) == text
    verdict = detector.detect(connect(client_id=raw))
    assert isinstance(verdict, Match)
    assert verdict.facts["client_id"] == text


def test_client_id_beyond_max_prefix(detector: MQTTDetector) -> None:
    """Big MQTT 5 properties push the identifier past max_prefix: still MQTT, no client_id."""
    properties = b"\x26" + b"\x00\x01k" + (3000).to_bytes(2, "big") + b"v" * 3000
    data = connect(level=5, properties=properties, client_id=b"far-away")
    assert len(data) > detector.max_prefix
    for size in (detector.max_prefix - 1, 100, 20):
        assert detector.detect(data[:size]) == NeedMore()
    expected = Match(facts={"protocol_name": "MQTT", "level": 5, "client_id": None})
    assert detector.detect(data[: detector.max_prefix]) == expected
    assert detector.detect(data) == expected  # the detector only ever looks at max_prefix


def test_remaining_length_of_four_bytes(detector: MQTTDetector) -> None:
    data = connect(client_id=b"big", payload_rest=b"", length=268_435_455)
    verdict = detector.detect(data)
    assert verdict == Match(facts={"protocol_name": "MQTT", "level": 4, "client_id": "big"})
    assert data[1:5] == b"\xff\xff\xff\x7f"


def _check(detector: MQTTDetector, data: bytes) -> Verdict:
    verdict = detector.detect(data)
    assert isinstance(verdict, Match | NoMatch | NeedMore)
    if isinstance(verdict, Match):
        for value in verdict.facts.values():
            assert value is None or isinstance(value, str | int)
    return verdict


@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    _check(MQTTDetector(), data)


@given(st.binary(max_size=200))
def test_garbage_after_a_connect_header_never_raises(tail: bytes) -> None:
    detector = MQTTDetector()
    for head in (b"\x10", MQTT311[:2], MQTT5[:13], MQTT31[:11], b"\x10\xff\xff\xff\x7f"):
        _check(detector, head + tail)


@given(st.sampled_from(sorted(GOOD)), st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_mutations_never_raise_and_never_flip_flop(case: str, where: int, noise: bytes) -> None:
    """Corrupt a real packet anywhere: no exception, and no verdict ever taken back."""
    detector = MQTTDetector()
    data, _ = GOOD[case]
    where %= len(data)
    data = data[:where] + noise + data[where + len(noise):]
    final = _check(detector, data)
    for size in range(len(data)):
        verdict = _check(detector, data[:size])
        if not isinstance(verdict, NeedMore):
            assert verdict == final, size
