"""
Fixtures and shared checks for the XMPP, HTTP and SSH detector tests.

Each fixture is a ``NAME.bin`` (the bytes a client sent, captured or hand-written)
beside a ``NAME.json`` sidecar saying where the bytes come from, the verdict, its
facts or NoMatch reason, and ``decided_at``: the prefix length at which the verdict
is first given. Before it every prefix must be NeedMore, from it on every prefix
the same verdict: that is the "every split" property for a pure detector, since a
chain feeding the bytes in any chunking only ever shows it prefixes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeep.interfaces import IDetector
from gatekeep.values import Match, NeedMore, NoMatch, Verdict

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

F = TypeVar("F", bound=Callable[..., None])


@attrs.frozen
class Fixture:
    kind: str
    name: str
    data: bytes
    sidecar: dict[str, Any]

    @property
    def decided_at(self) -> int:
        return int(self.sidecar["decided_at"])

    @property
    def matches(self) -> bool:
        return bool(self.sidecar["verdict"] == "match")


def load(kind: str) -> list[Fixture]:
    """Every fixture of ``kind`` (``xmpp``, ``http``, ``ssh``), sorted by name."""
    found = []
    for sidecar_path in sorted((FIXTURES / kind).glob("*.json")):
        sidecar = json.loads(sidecar_path.read_text())
        data = sidecar_path.with_suffix(".bin").read_bytes()
        found.append(Fixture(kind, sidecar_path.stem, data, sidecar))
    assert found, f"no fixtures in {FIXTURES / kind}"
    return found


def parametrize(fixtures: list[Fixture]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("fixture", fixtures, ids=[f.name for f in fixtures])


def tls_client_hellos() -> list[bytes]:
    """Real clients' first TLS bytes, captured for the TLS detector's tests."""
    return [p.read_bytes() for p in sorted((FIXTURES / "clienthello").glob("*.bin"))]


def check_verdict(detector: IDetector, fixture: Fixture) -> Verdict:
    verdict = detector.detect(fixture.data)
    if fixture.matches:
        assert isinstance(verdict, Match), verdict
        assert dict(verdict.facts) == fixture.sidecar["facts"]
        assert verdict.consumed == 0
    else:
        assert isinstance(verdict, NoMatch), verdict
        assert fixture.sidecar["reason"] in verdict.reason
    return verdict


def check_every_prefix(detector: IDetector, fixture: Fixture) -> None:
    final = detector.detect(fixture.data)
    for n in range(len(fixture.data) + 1):
        verdict = detector.detect(fixture.data[:n])
        if n < fixture.decided_at:
            assert verdict == NeedMore(), (n, verdict)
        else:
            assert verdict == final, (n, verdict)


def check_final(detector: IDetector, data: bytes, suffix: bytes) -> Verdict:
    """
    The detector's answer to ``data``, checking the promises every answer keeps.

    It never raises; it decides within ``max_prefix`` bytes; and a verdict once
    given does not change when ``suffix`` arrives.
    """
    verdict = detector.detect(data)
    assert isinstance(verdict, Match | NoMatch | NeedMore)
    if isinstance(verdict, Match | NoMatch):
        assert detector.detect(data + suffix) == verdict
    if len(data) >= detector.max_prefix:
        assert not isinstance(verdict, NeedMore)
    return verdict


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: replace, insert, delete or truncate."""
    out = bytearray(data)
    for kind, position, value in edits:
        at = position % (len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] = value
        elif kind == 1:
            out.insert(at, value)
        elif kind == 2 and at < len(out):
            del out[at]
        elif kind == 3:
            del out[at:]
    return bytes(out)


EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


def fast_and_slow(*strategies: Any) -> Callable[[F], tuple[F, F]]:
    """
    One property, two tests: ~200 examples always, 2000 under ``-m slow``.

    ``given`` wraps the body afresh for each, so their settings stay apart.
    """

    def make(body: F) -> tuple[F, F]:
        fast = FAST(given(*strategies)(body))
        slow = pytest.mark.slow(SLOW(given(*strategies)(body)))
        return fast, slow

    return make
