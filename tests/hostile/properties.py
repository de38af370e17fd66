"""
Example counts for the hostile suite's hypothesis tests, and the inputs they draw.

Each property is one test in the fast subset (a few hundred examples) and one under
``-m slow`` with the full count CI runs (10,000 per sniffer). Set
``GATEKEEP_HOSTILE_EXAMPLES=N`` to run the slow ones with N examples instead (a long
local run, or a quick look).
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.detectors._protocol_fixtures import mutate
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


def _reframed(rng: random.Random, data: bytes) -> bytes:
    """A captured ClientHello cut into 1-8 TLS records at random offsets."""
    message, version = handshake_of(data)
    parts = rng.randint(1, 8)
    cuts = rng.sample(range(1, max(2, len(message))), min(parts - 1, max(0, len(message) - 1)))
    return records(message, cuts, version)


@functools.cache
def _seeds(sniffer: Sniffer) -> tuple[bytes, ...]:
    return tuple(sniffer.seeds())


def make_input(sniffer: Sniffer, seed: int) -> tuple[bytes, list[int]]:
    """
    Input bytes and read boundaries for one example, from one drawn seed.

    Mostly a real client's bytes (re-framed into 1-8 records for TLS), mutated two
    times in three (bytes replaced, inserted, deleted, or the tail cut), with a random
    tail; a quarter of the time any bytes at all. Hypothesis draws only the seed, which
    keeps its overhead per example small and still names a failing input exactly.
    """
    rng = random.Random(seed)
    if rng.random() < 0.25:
        data = rng.randbytes(rng.randrange(400))
    else:
        data = rng.choice(_seeds(sniffer))
        if sniffer.name == "tls" and rng.random() < 0.5:
            data = _reframed(rng, data)
        if rng.random() < 2 / 3:
            edits = [(rng.randrange(4), rng.randrange(1 << 16), rng.randrange(256))
                     for _ in range(rng.randint(1, 6))]
            data = mutate(data, edits)
        data += rng.randbytes(rng.randrange(49))
    cuts = [rng.randrange(3000) for _ in range(rng.randrange(13))]
    return data, cuts


def inputs(sniffer: Sniffer) -> st.SearchStrategy[tuple[bytes, list[int]]]:
    """Examples for ``sniffer``: see :func:`make_input`."""
    return st.integers(0, 2**64 - 1).map(lambda seed: make_input(sniffer, seed))
