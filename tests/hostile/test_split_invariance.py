"""
Every sniffer gives the same verdict however its input is split into reads.

A chain only ever shows a detector prefixes of what the client sent (one more per
read), so "the same verdict for every split" is: every prefix is NeedMore until some
length, and from there on every prefix gets the final verdict (facts, reason and
bytes consumed included). This is checked for each prefix of each input, and once
more through :func:`gatekeep.sniff.run_detectors` (max_prefix cut-off, end of
input) with the input cut into drawn reads.
"""

from __future__ import annotations

import pytest

from gatekeep.values import NeedMore, Verdict
from tests.hostile.properties import fast_and_full, inputs
from tests.hostile.sniffers import SNIFFERS, Sniffer, chain_verdict, check_verdict_text

PREAMBLES = {"proxy-required", "proxy-optional"}


def check_every_prefix(sniffer: Sniffer, data: bytes) -> Verdict:
    detector = sniffer.detector()
    decided: Verdict | None = None
    for size in range(len(data) + 1):
        verdict = detector.detect(data[:size])
        if decided is None:
            if isinstance(verdict, NeedMore):
                continue
            decided = verdict
            if sniffer.name not in PREAMBLES:
                check_verdict_text(verdict)
            # Past the decision a verdict cannot change: check the next few prefixes
            # and the whole input (below) rather than every one.
            for later in range(size + 1, min(size + 8, len(data))):
                assert detector.detect(data[:later]) == decided, (later, decided)
            break
    final: Verdict = detector.detect(data)
    assert decided is None or final == decided
    if isinstance(final, NeedMore):
        assert len(data) < detector.max_prefix
    return final


def check_splits(sniffer: Sniffer, data: bytes, cuts: list[int]) -> None:
    check_every_prefix(sniffer, data)
    if sniffer.name in PREAMBLES:
        return
    points = sorted({c for c in cuts if 0 < c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    detector = sniffer.detector()
    assert chain_verdict(detector, chunks) == chain_verdict(detector, [data])


def _property(name: str) -> tuple[object, object]:
    sniffer = SNIFFERS[name]

    @fast_and_full(inputs(sniffer))
    def prop(example: tuple[bytes, list[int]]) -> None:
        check_splits(sniffer, *example)

    return prop


test_tls, test_tls_full = _property("tls")
test_xmpp, test_xmpp_full = _property("xmpp")
test_http, test_http_full = _property("http")
test_ssh, test_ssh_full = _property("ssh")
test_proxy_detector, test_proxy_detector_full = _property("proxy")
test_proxy_preamble_required, test_proxy_preamble_required_full = _property("proxy-required")
test_proxy_preamble_optional, test_proxy_preamble_optional_full = _property("proxy-optional")
test_mqtt_plugin, test_mqtt_plugin_full = _property("mqtt")


@pytest.mark.parametrize("name", sorted(SNIFFERS))
def test_seeds_decide(name: str) -> None:
    """Every seed input is decided (the suite starts from meaningful bytes)."""
    sniffer = SNIFFERS[name]
    seeds = sniffer.seeds()
    assert seeds
    for seed in seeds:
        check_every_prefix(sniffer, seed)
