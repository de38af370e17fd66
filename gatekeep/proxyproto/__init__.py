"""
The PROXY protocol, versions 1 and 2: one parser and one builder for both
directions (receiving from load balancers, sending to backends).

Written from HAProxy's specification (doc/proxy-protocol.txt). The parser is a
pure function of the bytes received so far, so it can be fed a header split in
any way, and it is strict wherever the spec says a receiver must refuse.
"""

from gatekeep.proxyproto.codec import build, has_signature, parse
from gatekeep.proxyproto.model import (
    TLV,
    Address,
    Command,
    Family,
    Incomplete,
    InetAddress,
    Invalid,
    NotProxy,
    ParseResult,
    ProxyHeader,
    UnixAddress,
)
from gatekeep.proxyproto.tlv import SSLInfo, decode_ssl
from gatekeep.proxyproto.v1 import MAX_V1_LENGTH, parse_v1
from gatekeep.proxyproto.v2 import MAX_V2_LENGTH, parse_v2

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_LENGTH",
    "TLV",
    "Address",
    "Command",
    "Family",
    "Incomplete",
    "InetAddress",
    "Invalid",
    "NotProxy",
    "ParseResult",
    "ProxyHeader",
    "SSLInfo",
    "UnixAddress",
    "build",
    "decode_ssl",
    "has_signature",
    "parse",
    "parse_v1",
    "parse_v2",
]
