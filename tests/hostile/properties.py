"""
Example counts for the hostile suite's hypothesis tests, and the inputs they draw.

Each property is one test in the fast subset (a few hundred examples) and one under
``-m slow`` with the full count CI runs (10,000 per sniffer). Set
``GATEKEEP_HOSTILE_EXAMPLES=N`` to run the slow ones with N examples instead (a long
local run, or a quick look).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.detectors._protocol_fixtures import EDITS, mutate
from tests.detectors._tls_helpers import handshake_of, records
from tests.hostile.sniffers import Sniffer

__all__ = ["FULL_EXAMPLES", "fast_and_full", "inputs"]

FULL_EXAMPLES = int(os.environ.get("GATEKEEP_HOSTILE_EXAMPLES", "10000"))
FAST_EXAMPLES = 150

F = TypeVar("F", bound=Callable[..., None])
_HEALTH = list(HealthCheck)


def fast_and_full(*strategies: Any, share: int = 1) -> Callable[[F], tuple[F, F]]:
    """
    One property, two tests: a quick one always, the full count under ``-m slow``
    (divided by ``share`` when several tests share one count).
    """

    def make(body: F) -> tuple[F, F]:
        fast = settings(max_examples=FAST_EXAMPLES, deadline=None,
                        suppress_health_check=_HEALTH)(given(*strategies)(body))
        full = settings(max_examples=-(-FULL_EXAMPLES // share), deadline=None,
                        suppress_health_check=_HEALTH)(given(*strategies)(body))
        return fast, pytest.mark.slow(full)

    return make


def _reframed(draw: st.DrawFn, data: bytes) -> bytes:
    """A captured ClientHello cut into 1-8 TLS records at drawn offsets."""
    message, version = handshake_of(data)
    parts = draw(st.integers(1, 8))
    cuts = draw(st.lists(st.integers(1, max(1, len(message) - 1)), min_size=parts - 1,
                         max_size=parts - 1, unique=True))
    return records(message, cuts, version)


@st.composite
def _seeded(draw: st.DrawFn, sniffer: Sniffer) -> bytes:
    data = draw(st.sampled_from(sniffer.seeds()))
    if sniffer.name == "tls" and draw(st.booleans()):
        data = _reframed(draw, data)
    if draw(st.integers(0, 2)):
        data = mutate(data, draw(EDITS))
    return data + draw(st.binary(max_size=48))


def inputs(sniffer: Sniffer) -> st.SearchStrategy[bytes]:
    """Mostly real clients' bytes, re-framed and mutated; sometimes any bytes at all."""
    return st.one_of(_seeded(sniffer), _seeded(sniffer), _seeded(sniffer),
                     st.binary(max_size=400))
