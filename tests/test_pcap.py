"""
Tests for :mod:`gatekeep.pcap`, the capture reader behind ``gatekeep explain``.

Real captures of loopback connections (tests/fixtures/pcap, made by capture.sh there,
which records what the client sent in captures.json) must give back exactly the client's
bytes. The cases a quiet loopback never shows (reordering, retransmission, VLAN tags,
fragments, other link types, a capture begun mid-connection) are built here as bytes, by
code that can be read. Whatever the input, the reader returns bytes or raises ValueError.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import struct
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gatekeep.pcap
from gatekeep.pcap import CaptureWarning, client_payload, is_capture

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pcap"
SIDECAR = json.loads((FIXTURES / "captures.json").read_text())
REAL = sorted(SIDECAR)

# A warning means bytes were left out: only the tests that expect one may see one.
pytestmark = pytest.mark.filterwarnings("error::gatekeep.pcap.CaptureWarning")

SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10
IPV4, IPV6 = 0x0800, 0x86DD


# -- building packets -------------------------------------------------------------------

def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
        options: bytes = b"") -> bytes:
    offset = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq % 2**32, ack % 2**32, offset << 4,
                       flags, 65535, 0, 0) + options + payload


def ipv4(src: str, dst: str, body: bytes, *, proto: int = 6, options: bytes = b"",
         fragment: int = 0, total: int | None = None) -> bytes:
    header = 20 + len(options)
    length = header + len(body) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", 0x40 | header // 4, 0, length, 1, fragment, 64, proto,
                       0, ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed) + options + body


def ipv6(src: str, dst: str, body: bytes, *, proto: int = 6,
         extensions: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """``extensions``: (header type, body padded so the header is a multiple of 8)."""
    chain = b""
    for index, (_, ext) in enumerate(extensions):
        following = extensions[index + 1][0] if index + 1 < len(extensions) else proto
        chain += struct.pack("!BB", following, (len(ext) + 2) // 8 - 1) + ext
    first = extensions[0][0] if extensions else proto
    payload = chain + body
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), first, 64,
                       ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


class Flow:
    """Both directions of one connection, as IP packets, sequence numbers kept for you."""

    def __init__(self, client: str = "192.0.2.1", server: str = "192.0.2.2", *,
                 cport: int = 40000, sport: int = 443, isn: int = 1000,
                 server_isn: int = 7000, **ip_options: Any) -> None:
        """``ip_options`` go to :func:`ipv4` or :func:`ipv6` for every packet."""
        self.client, self.server, self.cport, self.sport = client, server, cport, sport
        self.isn, self.server_isn = isn, server_isn
        build = ipv6 if ":" in client else ipv4
        self.ip = functools.partial(build, **ip_options)

    def c2s(self, offset: int, payload: bytes = b"", flags: int = PSH | ACK) -> bytes:
        """Client to server; ``offset`` counts from the client's first data byte."""
        return self.ip(self.client, self.server,
                       tcp(self.cport, self.sport, self.isn + 1 + offset,
                           self.server_isn + 1, flags, payload))

    def s2c(self, offset: int, payload: bytes = b"", flags: int = PSH | ACK,
            acked: int = 0) -> bytes:
        return self.ip(self.server, self.client,
                       tcp(self.sport, self.cport, self.server_isn + 1 + offset,
                           self.isn + 1 + acked, flags, payload))

    def handshake(self) -> list[bytes]:
        return [
            self.ip(self.client, self.server, tcp(self.cport, self.sport, self.isn, 0, SYN)),
            self.ip(self.server, self.client, tcp(self.sport, self.cport, self.server_isn,
                                                  self.isn + 1, SYN | ACK)),
            self.c2s(0, flags=ACK),
        ]

    def writes(self, parts: Iterable[bytes], reply: bytes = b"") -> list[bytes]:
        """The client's writes in order, each acknowledged, then a reply and a close."""
        packets, offset = [], 0
        for part in parts:
            packets.append(self.c2s(offset, part))
            offset += len(part)
            packets.append(self.s2c(0, flags=ACK, acked=offset))
        packets.append(self.c2s(offset, flags=FIN | ACK))
        if reply:
            packets.append(self.s2c(0, reply, acked=offset + 1))
        return packets

    def whole(self, parts: Iterable[bytes], reply: bytes = b"") -> list[bytes]:
        return self.handshake() + self.writes(parts, reply)


def is_ipv6(ip: bytes) -> bool:
    return ip[:1] != b"" and ip[0] >> 4 == 6


def ether(ip: bytes, vlans: Sequence[int] = (), tpid: int = 0x8100) -> bytes:
    tags = b"".join(struct.pack("!HH", tpid, vid) for vid in vlans)
    ethertype = IPV6 if is_ipv6(ip) else IPV4
    return b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack("!H", ethertype) + ip


def sll(ip: bytes) -> bytes:
    return struct.pack("!HHH8sH", 0, 772, 6, bytes(8), IPV6 if is_ipv6(ip) else IPV4) + ip


def sll2(ip: bytes) -> bytes:
    proto = IPV6 if is_ipv6(ip) else IPV4
    return struct.pack("!HHIHBB8s", proto, 0, 1, 772, 0, 6, bytes(8)) + ip


def null(ip: bytes) -> bytes:
    """BSD loopback: the address family, here in network byte order (LOOP's)."""
    return struct.pack("!I", 24 if is_ipv6(ip) else 2) + ip


def pcap(frames: Iterable[bytes], link_type: int = 1, *, order: str = "<", nano: bool = False,
         snaplen: int = 65535) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, link_type)
    for number, frame in enumerate(frames):
        captured = frame[:snaplen]
        out += struct.pack(order + "IIII", number, 0, len(captured), len(frame)) + captured
    return out


def block(kind: int, body: bytes, order: str) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack(order + "II", kind, len(body) + 12) + body + struct.pack(
        order + "I", len(body) + 12)


def pcapng(frames: Iterable[bytes | tuple[int, bytes]], link_types: Sequence[int] = (1,), *,
           order: str = "<", kind: int = 6) -> bytes:
    """Frames go in enhanced (6), simple (3) or obsolete (2) packet blocks."""
    out = block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)
    for link_type in link_types:
        out += block(1, struct.pack(order + "HHI", link_type, 0, 0), order)
    for item in frames:
        interface, frame = item if isinstance(item, tuple) else (0, item)
        if kind == 6:
            head = struct.pack(order + "IIIII", interface, 0, 0, len(frame), len(frame))
        elif kind == 2:
            head = struct.pack(order + "HHIIII", interface, 0, 0, 0, len(frame), len(frame))
        else:
            head = struct.pack(order + "I", len(frame))
        out += block(kind, head + frame, order)
    return out


def pcap_frames(data: bytes) -> tuple[int, list[bytes]]:
    """A little-endian classic pcap's link type and frames, to rebuild real captures."""
    link_type = struct.unpack_from("<I", data, 20)[0]
    frames, pos = [], 24
    while pos < len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        frames.append(data[pos + 16:pos + 16 + caplen])
        pos += 16 + caplen
    return link_type, frames


def real(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sent(name: str, connection: int = 0) -> bytes:
    return bytes.fromhex(SIDECAR[name]["client_payloads"][connection])


HTTP = [b"GET / HTTP/1.1\r\n", b"Host: example.test\r\n", b"\r\n"]
HELLO = b"".join(HTTP)


# -- real captures ----------------------------------------------------------------------

@pytest.mark.parametrize("name", REAL)
def test_real_capture_gives_each_connection_exactly(name: str) -> None:
    data = real(name)
    assert is_capture(data)
    assert len(data) < 20_000
    connections = SIDECAR[name]["client_payloads"]
    assert len(connections) == 2
    for index in range(len(connections)):
        assert client_payload(data, connection=index) == sent(name, index)


@pytest.mark.parametrize("name", REAL)
def test_real_capture_is_what_the_sidecar_says(name: str) -> None:
    """The fixtures cover the formats and link types they claim to."""
    data, info = real(name), SIDECAR[name]
    if info["format"] == "pcap":
        assert struct.unpack_from("<I", data, 20)[0] == info["link_type"]
    else:
        assert data[:4] == b"\x0a\x0d\x0d\x0a"
        assert struct.pack("<HH", info["link_type"], 0) in data[:200]
    expected = {"lo-ipv4.pcap": 1, "lo-ipv6-nano.pcap": 1, "any-sll-ipv4.pcap": 113,
                "any-sll2-ipv6.pcap": 276, "lo-ipv4.pcapng": 1, "any-ipv6.pcapng": 113}
    assert {n: SIDECAR[n]["link_type"] for n in REAL} == expected
    assert real("lo-ipv6-nano.pcap")[:4] == b"\x4d\x3c\xb2\xa1"


@pytest.mark.parametrize("name", REAL)
def test_real_capture_connection_out_of_range(name: str) -> None:
    with pytest.raises(ValueError, match=r"connection 2 is out of range.* 2 TCP connection"):
        client_payload(real(name), connection=2)
    with pytest.raises(ValueError, match="out of range"):
        client_payload(real(name), connection=-1)


def test_real_capture_rewritten_in_other_containers() -> None:
    """The same real frames, big-endian, nanosecond, and in each pcapng packet block."""
    link_type, frames = pcap_frames(real("lo-ipv4.pcap"))
    expected = sent("lo-ipv4.pcap", 1)
    for data in [pcap(frames, link_type, order=">"), pcap(frames, link_type, nano=True),
                 pcapng(frames, [link_type], order=">"),
                 pcapng(frames, [link_type], kind=3), pcapng(frames, [link_type], kind=2)]:
        assert client_payload(data, connection=1) == expected


def test_real_capture_begun_mid_connection() -> None:
    """Without the handshake, the first packet with payload names the client."""
    link_type, frames = pcap_frames(real("lo-ipv4.pcap"))
    data = pcap(frames[3:], link_type)
    assert client_payload(data) == sent("lo-ipv4.pcap", 0)
    assert client_payload(data, connection=1) == sent("lo-ipv4.pcap", 1)


def test_real_capture_reversed_and_doubled() -> None:
    """Every packet twice and in reverse order (after the SYN) still gives the stream."""
    link_type, frames = pcap_frames(real("any-sll-ipv4.pcap"))
    first = frames[:14]
    data = pcap(first[:1] + [f for f in reversed(first[1:]) for _ in (0, 1)], link_type)
    assert client_payload(data) == sent("any-sll-ipv4.pcap", 0)


def test_explain_reads_captures() -> None:
    from gatekeep.explain import read_input

    assert read_input(str(FIXTURES / "lo-ipv4.pcapng")) == sent("lo-ipv4.pcapng", 0)


# -- reassembly -------------------------------------------------------------------------

def test_segments_out_of_order() -> None:
    flow = Flow()
    data = [*flow.handshake(), flow.c2s(16, HTTP[1]), flow.c2s(36, HTTP[2]), flow.c2s(0, HTTP[0])]
    assert client_payload(pcap(map(ether, data))) == HELLO


def test_retransmissions_and_overlaps_deduplicated() -> None:
    flow = Flow()
    data = [
        *flow.handshake(),
        flow.c2s(0, HTTP[0]), flow.c2s(0, HTTP[0]),             # plain retransmission
        flow.c2s(10, HELLO[10:30]),                             # overlaps both sides
        flow.c2s(16, HTTP[1]), flow.c2s(0, HELLO[:20]),         # repacketized resend
        flow.c2s(36, HTTP[2]), flow.c2s(36, HTTP[2]),
    ]
    assert client_payload(pcap(map(ether, data))) == HELLO


def test_server_bytes_are_not_the_clients() -> None:
    flow = Flow()
    data = [*flow.handshake(), flow.s2c(0, b"220 banner\r\n"), *flow.writes(HTTP, b"reply")]
    assert client_payload(pcap(map(ether, data))) == HELLO


def test_gap_stops_the_stream_and_says_so() -> None:
    flow = Flow()
    data = [*flow.handshake(), flow.c2s(0, HTTP[0]), flow.c2s(36, HTTP[2])]
    with pytest.warns(CaptureWarning, match=r"gap after byte 16 .* 2 later bytes"):
        assert client_payload(pcap(map(ether, data))) == HTTP[0]


def test_mid_connection_start() -> None:
    flow = Flow()
    data = [flow.s2c(0, flags=ACK, acked=5), flow.c2s(5, b"later "), flow.s2c(0, b"answer"),
            flow.c2s(11, b"bytes")]
    assert client_payload(pcap(map(ether, data))) == b"later bytes"


def test_mid_connection_ignores_bytes_from_before_the_start() -> None:
    flow = Flow()
    data = [flow.c2s(5, b"later "), flow.c2s(0, b"earlylater "), flow.c2s(11, b"bytes")]
    assert client_payload(pcap(map(ether, data))) == b"later bytes"


def test_only_the_syn_ack_was_captured() -> None:
    flow = Flow()
    data = flow.handshake()[1:] + flow.writes(HTTP)
    assert client_payload(pcap(map(ether, data))) == HELLO


def test_sequence_numbers_wrap() -> None:
    flow = Flow(isn=2**32 - 20)
    data = [*flow.handshake(), flow.c2s(36, HTTP[2]), flow.c2s(16, HTTP[1]), flow.c2s(0, HTTP[0])]
    assert client_payload(pcap(map(ether, data))) == HELLO


def test_data_on_the_syn() -> None:
    """TCP Fast Open: the SYN's own sequence number comes before its data."""
    flow = Flow()
    syn = flow.ip(flow.client, flow.server, tcp(flow.cport, flow.sport, flow.isn, 0, SYN,
                                                 HTTP[0]))
    data = [syn, *flow.handshake()[1:], flow.c2s(16, HTTP[1] + HTTP[2])]
    assert client_payload(pcap(map(ether, data))) == HELLO


def test_two_connections_by_index() -> None:
    first, second = Flow(cport=40000), Flow(cport=40001, isn=555)
    data = (first.handshake() + second.handshake() + second.writes([b"second ", b"one"])
            + first.writes([b"first"]))
    frames = pcap(map(ether, data))
    assert client_payload(frames) == b"first"
    assert client_payload(frames, connection=1) == b"second one"
    with pytest.raises(ValueError, match="2 TCP connection"):
        client_payload(frames, connection=2)


def test_port_reuse_with_a_new_isn_is_a_new_connection() -> None:
    old, new = Flow(isn=100), Flow(isn=90000)
    data = [*old.whole([b"old"]), old.c2s(4, flags=RST), *new.handshake(),
            new.handshake()[0], *new.writes([b"new"])]  # the repeated SYN is no third
    frames = pcap(map(ether, data))
    assert [client_payload(frames, connection=i) for i in (0, 1)] == [b"old", b"new"]
    with pytest.raises(ValueError, match="out of range"):
        client_payload(frames, connection=2)


def test_connection_without_client_bytes_is_empty() -> None:
    flow = Flow()
    data = [*flow.handshake(), flow.s2c(0, b"server speaks first")]
    assert client_payload(pcap(map(ether, data))) == b""


# -- network and link layers ------------------------------------------------------------

def test_vlan_tags() -> None:
    flow = Flow()
    packets = flow.whole(HTTP)
    assert client_payload(pcap(ether(p, [100]) for p in packets)) == HELLO
    assert client_payload(pcap(ether(p, [100, 200], tpid=0x88A8) for p in packets)) == HELLO


def test_ethernet_padding_and_non_ip_frames_ignored() -> None:
    flow = Flow()
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + bytes(28)
    frames = [arp] + [ether(p) + bytes(20) for p in flow.whole(HTTP)]
    assert client_payload(pcap(frames)) == HELLO


def test_ipv6_with_extension_headers() -> None:
    hop, routing, dest = (0, bytes(6)), (43, bytes(6)), (60, bytes(14))
    flow = Flow("2001:db8::1", "2001:db8::2", extensions=[hop, routing, dest])
    assert client_payload(pcap(flow.whole(HTTP), 101)) == HELLO


def test_ipv6_fragments_skipped_and_said() -> None:
    flow = Flow("2001:db8::1", "2001:db8::2")
    packets = [*flow.handshake(), flow.c2s(0, HTTP[0])]
    fragment = ipv6(flow.client, flow.server, flow.c2s(16, HTTP[1])[40:],
                    extensions=[(44, bytes(6))])
    with pytest.warns(CaptureWarning, match="IPv6 fragments"):
        assert client_payload(pcap([*packets, fragment], 101)) == HTTP[0]


def test_ipv4_options() -> None:
    flow = Flow(options=b"\x01" * 8)  # no-operation options
    assert client_payload(pcap(flow.whole(HTTP), 101)) == HELLO


def test_ipv4_fragments_first_used_others_skipped() -> None:
    flow = Flow()
    segment = tcp(flow.cport, flow.sport, flow.isn + 1, flow.server_isn + 1, ACK, HELLO)
    first = ipv4(flow.client, flow.server, segment[:40], fragment=0x2000)
    rest = ipv4(flow.client, flow.server, segment[40:], fragment=5)
    with pytest.warns(CaptureWarning) as caught:
        assert client_payload(pcap(map(ether, [*flow.handshake(), first, rest]))) == HELLO[:20]
    message = str(caught[0].message)
    assert "IPv4 fragments after the first (skipped)" in message
    assert "only their first fragment used" in message


def test_ipv4_total_length_zero_from_segmentation_offload() -> None:
    flow = Flow()
    packets = [p[:2] + b"\0\0" + p[4:] for p in flow.whole(HTTP)]
    assert client_payload(pcap(map(ether, packets))) == HELLO


def test_snap_length_cuts_are_said() -> None:
    flow = Flow()
    with pytest.warns(CaptureWarning, match="snap length"):
        payload = client_payload(pcap(map(ether, flow.whole(HTTP)), snaplen=14 + 40 + 10))
    assert payload == HTTP[0][:10]


@pytest.mark.parametrize(("link_type", "wrap"), [
    (0, lambda ip: struct.pack("<I", 30 if is_ipv6(ip) else 2) + ip),
    (0, lambda ip: struct.pack(">I", 24 if is_ipv6(ip) else 2) + ip),
    (108, null),
    (101, lambda ip: ip), (12, lambda ip: ip), (14, lambda ip: ip),
    (113, sll), (276, sll2), (1, ether),
], ids=["null-le", "null-be", "loop", "raw", "raw12", "raw14", "sll", "sll2", "ethernet"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_link_types(link_type: int, wrap, family: str) -> None:
    flow = Flow() if family == "ipv4" else Flow("2001:db8::1", "2001:db8::2")
    frames = [wrap(p) for p in flow.whole(HTTP, b"reply")]
    assert client_payload(pcap(frames, link_type)) == HELLO
    assert client_payload(pcapng(frames, [link_type], order=">")) == HELLO


def test_packets_that_cannot_be_used_are_skipped() -> None:
    flow = Flow("2001:db8::1", "2001:db8::2")
    udp = ipv6(flow.client, flow.server, b"\0" * 12, proto=17)
    bad_offset = bytearray(flow.c2s(0, b"not counted"))
    bad_offset[40 + 12] = 3 << 4
    junk = [b"", b"\x45garbage", b"\x99" * 40, udp, bytes(bad_offset), ipv4("192.0.2.9",
            "192.0.2.8", tcp(1, 2, 3, 4, ACK)[:12])]
    assert client_payload(pcap([*junk, *flow.whole(HTTP)], 101)) == HELLO


def test_pcapng_interfaces_of_several_link_types() -> None:
    """Interfaces are per section; a foreign one is skipped when TCP was found elsewhere."""
    flow = Flow()
    first = pcapng([(1, sll(p)) for p in flow.whole(HTTP)], [147, 113])
    second = pcapng([(0, p) for p in Flow(cport=1).whole([b"two"])], [101], order=">")
    assert client_payload(first + second, connection=1) == b"two"
    with pytest.warns(CaptureWarning, match="unsupported link type 147"):
        client_payload(pcapng([(0, b"802.11"), *[(1, sll(p)) for p in flow.whole(HTTP)]],
                              [147, 113]))


# -- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "message"), [
    (b"", "not a pcap"),
    (b"GET / HTTP/1.1\r\n\r\n", "not a pcap"),
    (pcap([])[:20], "truncated pcap: the file header"),
    (pcap([b"x" * 40])[:-1], "truncated or corrupt pcap: packet 1 claims 40"),
    (pcap([b"x" * 40]) + b"\0" * 5, "truncated pcap: packet 2"),
    (pcap([], 105), "unsupported link type 105"),
    (pcap([], 1 | 0x10000000), "no TCP connection"),
    (pcap([ether(ipv4("192.0.2.1", "192.0.2.2", b"udp!" * 4, proto=17))]),
     r"no TCP connection in the capture \(1 packets"),
    (pcapng([b"x"], [105]), "unsupported link type 105"),
    (pcapng([b"x"])[:-4], "truncated or corrupt pcapng"),
    (pcapng([b"x"]) + b"\0" * 8, "truncated pcapng: 8 stray bytes"),
    (pcapng([(3, b"x")]), "names interface 3, but its section describes 1"),
    (pcapng([b"x"], []), "names interface 0"),
    (pcapng([], []) + block(1, bytes(4), "<"), "short interface block"),
    (pcapng([b"x"], [], kind=3), "names interface 0"),
    (pcapng([b"x"], [1])[:-4] + b"\xff\0\0\0", "mismatched lengths"),
    (pcapng([])[:8] + b"\x1a\x2b\x3c\x4d" + pcapng([])[12:], "claims 469762048 bytes"),
    (b"\x0a\x0d\x0d\x0a" + b"\x08\0\0\0" + b"\x4d\x3c\x2b\x1a", "claims 8 bytes"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        client_payload(data)


def test_pcapng_section_header_with_a_bad_byte_order() -> None:
    second = bytearray(pcapng([]))
    second[8:12] = b"\x01\x02\x03\x04"
    with pytest.raises(ValueError, match="bad byte-order magic"):
        client_payload(pcapng([]) + bytes(second))


def test_pcapng_packet_block_too_short_or_overlong() -> None:
    short = pcapng([]) + block(6, bytes(8), "<")
    with pytest.raises(ValueError, match="too short"):
        client_payload(short)
    overlong = pcapng([]) + block(6, struct.pack("<IIIII", 0, 0, 0, 50, 50) + bytes(4), "<")
    with pytest.raises(ValueError, match="claims 50 bytes, holds 4"):
        client_payload(overlong)


@pytest.mark.parametrize("head", [
    b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1",
    b"\x0a\x0d\x0d\x0a\x1c\0\0\0\x4d\x3c\x2b\x1a", b"\x0a\x0d\x0d\x0a\0\0\0\x1c\x1a\x2b\x3c\x4d",
])
def test_is_capture(head: bytes) -> None:
    assert is_capture(head + bytes(20))


@pytest.mark.parametrize("data", [
    b"", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n", b"\n\r\r\nHELO example\r\n",
    b"\xa1\xb2\xc3", b"\0" * 24,
])
def test_is_not_capture(data: bytes) -> None:
    assert not is_capture(data)


def test_public_surface() -> None:
    assert gatekeep.pcap.__all__ == ["CaptureWarning", "client_payload", "is_capture"]


# -- fuzzing ----------------------------------------------------------------------------

MAGICS = [b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1",
          b"\x0a\x0d\x0d\x0a\x1c\0\0\0\x4d\x3c\x2b\x1a",
          b"\x0a\x0d\x0d\x0a\0\0\0\x1c\x1a\x2b\x3c\x4d"]
FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def bytes_or_value_error(data: bytes, connection: int = 0) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptureWarning)
        try:
            assert isinstance(client_payload(data, connection=connection), bytes)
        except ValueError as error:
            assert str(error)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    bytes_or_value_error(data)


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=600))
def test_fuzz_after_a_magic_number(magic: bytes, rest: bytes) -> None:
    bytes_or_value_error(magic + rest)


@FUZZ
@given(st.sampled_from(REAL), st.data())
def test_fuzz_mutated_real_captures(name: str, data: st.DataObject) -> None:
    capture = bytearray(real(name))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(capture) - 1))
        capture[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(capture)))
    bytes_or_value_error(bytes(capture[:cut]), data.draw(st.integers(-1, 3)))


@FUZZ
@given(st.sampled_from([0, 1, 12, 14, 101, 108, 113, 276]),
       st.lists(st.binary(max_size=120), max_size=12), st.data())
def test_fuzz_frames(link_type: int, frames: list[bytes], data: st.DataObject) -> None:
    """Random frames behind well-formed headers, so the IP and TCP parsers see them."""
    flow = Flow() if data.draw(st.booleans()) else Flow("2001:db8::1", "2001:db8::2")
    packets = flow.whole(HTTP)
    wrap = {1: ether, 113: sll, 276: sll2, 0: null, 108: null}.get(link_type, lambda ip: ip)
    mixed = [wrap(p[:data.draw(st.integers(0, len(p)))]) for p in packets] + frames
    order = data.draw(st.permutations(range(len(mixed))))
    bytes_or_value_error(pcap([mixed[i] for i in order], link_type))
