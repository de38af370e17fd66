"""
Every sniffer gatekeep runs on a client's first bytes, with seed inputs to start from.

Shared by the hostile suite's property tests and its atheris harness
(:mod:`tests.hostile.fuzz_sniffers`): the built-in detectors, the PROXY preamble
(as the chain reads it, and as the ``proxy`` detector reports it) and each detector
plugin in ``examples/``. Seeds are real clients' bytes (the captured fixtures) plus a
few hand-made ones; the tests mutate, re-frame and split them.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from gatekeep.detectors.http import HTTPDetector
from gatekeep.detectors.proxy import ProxyDetector
from gatekeep.detectors.ssh import SSHDetector
from gatekeep.detectors.tls import TLSDetector
from gatekeep.detectors.xmpp import XMPPDetector
from gatekeep.interfaces import IDetector
from gatekeep.preamble import Done, Refuse, Step, Waiting, step
from gatekeep.sniff import run_detectors
from gatekeep.values import FactValue, Match, NeedMore, NoMatch, Verdict

__all__ = [
    "NAME_FACTS",
    "SNIFFERS",
    "Sniffer",
    "chain_verdict",
    "check_fact_text",
    "mqtt_detector",
]

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLES = ROOT / "examples"


@functools.cache
def mqtt_detector() -> IDetector:
    """The example plugin's detector, loaded from its source file (it is not installed)."""
    path = EXAMPLES / "mqtt-detector" / "gatekeep_mqtt.py"
    spec = importlib.util.spec_from_file_location("gatekeep_mqtt", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    detector: IDetector = module.MQTTDetector()
    return detector


@attrs.frozen
class PreambleSniffer:
    """
    The PROXY preamble as the chain reads it from a trusted peer
    (:func:`gatekeep.preamble.step`), seen as a detector: Done/Refuse are final.
    """

    mode: str
    name: str = "preamble"
    max_prefix: int = 4096

    def detect(self, prefix: bytes) -> Verdict:
        outcome: Step = step(self.mode, True, prefix, None)  # type: ignore[arg-type]
        if isinstance(outcome, Waiting):
            return NeedMore()
        if isinstance(outcome, Refuse):
            return NoMatch(outcome.reason)
        assert isinstance(outcome, Done)
        header = outcome.header
        if header is None:
            return Match({"header": False}, 0)
        return Match({"header": True, "version": header.version,
                      "command": header.command.name, "family": header.family.name,
                      "source": str(header.source), "destination": str(header.destination),
                      "tlvs": tuple(f"{e.type}:{e.value.hex()}" for e in header.tlvs)},
                     outcome.consumed)


def _files(kind: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((FIXTURES / kind).glob("*.bin"))]


def _proxy_seeds() -> list[bytes]:
    v2 = b"\r\n\r\n\x00\r\nQUIT\n"
    return [
        b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 1 65535\r\n",
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n\x16\x03\x01",
        b"PROXY UNKNOWN\r\n",
        v2 + bytes.fromhex("20000000"),
        v2 + bytes.fromhex("2111000cc0000201c6336401dc0401bb") + b"SSH-2.0-x\r\n",
        v2 + bytes.fromhex("21110018c0000201c6336401dc0401bb010002683203000412e81190"),
        v2 + bytes.fromhex("2121002420010db8000000000000000000000001")
        + bytes(15) + b"\x01" + bytes.fromhex("d4310050"),
    ]


def _mqtt_seeds() -> list[bytes]:
    return [bytes.fromhex(h) for h in (
        "101700044d5154540402003c000b676b2d73656e736f722d31",
        "101b00044d5154540502003c03210014000b676b2d73656e736f722d31",
        "101900064d51497364700302003c000b676b2d73656e736f722d31",
        "103100044d51545404ce003c000b676b2d73656e736f722d310004676f6e6500036279650005616c6963"
        "650006733363726574",
        "102c00044d5154540502003c141100000e102600047369746500036c6162210014000b676b2d73656e"
        "736f722d31",
        "100c00044d5154540402003c0000",
    )]


@attrs.frozen
class Sniffer:
    name: str
    detector: Callable[[], Any]
    seeds: Callable[[], list[bytes]]


SNIFFERS: dict[str, Sniffer] = {s.name: s for s in (
    Sniffer("tls", TLSDetector, lambda: _files("clienthello")),
    Sniffer("xmpp", XMPPDetector, lambda: _files("xmpp")),
    Sniffer("http", HTTPDetector, lambda: _files("http")),
    Sniffer("ssh", SSHDetector, lambda: _files("ssh")),
    Sniffer("proxy", ProxyDetector, _proxy_seeds),
    Sniffer("proxy-required", lambda: PreambleSniffer("required"), _proxy_seeds),
    Sniffer("proxy-optional", lambda: PreambleSniffer("optional"), _proxy_seeds),
    Sniffer("mqtt", mqtt_detector, _mqtt_seeds),
)}

#: Facts that carry a name a client chose, and must come out validated.
NAME_FACTS = {"sni", "host", "to", "authority"}
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")
_IPV6 = re.compile(r"[0-9a-f:.]{2,45}")


def check_fact_text(key: str, value: FactValue) -> None:
    """
    Raise AssertionError if a fact is not safe text: names must be canonical host
    names or IP literals of at most 253 characters; every string must be printable
    (no control characters, no line breaks) and bounded.
    """
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if item is None or isinstance(item, bool | int):
            continue
        assert isinstance(item, str), (key, item)
        assert item.isprintable(), (key, item)
        assert len(item) <= 16384, (key, len(item))
        if key in NAME_FACTS:
            assert len(item) <= 253, (key, item)
            assert (_NAME.fullmatch(item) or _IPV4.fullmatch(item)
                    or (":" in item and _IPV6.fullmatch(item))), (key, item)


def chain_verdict(detector: IDetector, chunks: list[bytes]) -> Verdict:
    """The verdict the chain reaches when the bytes arrive in ``chunks``, then EOF."""
    detectors = {detector.name: detector}
    verdicts: dict[str, Verdict] = {}
    received = b""
    for chunk in chunks:
        received += chunk
        run_detectors(detectors, received, verdicts, final=False)
    run_detectors(detectors, received, verdicts, final=True)
    return verdicts[detector.name]


def check_verdict_text(verdict: Verdict) -> None:
    if isinstance(verdict, Match):
        for key, value in verdict.facts.items():
            check_fact_text(key, value)
