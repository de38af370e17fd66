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
from typing import Any, TypeVar, cast

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


def match_facts(detector: IDetector, data: bytes) -> dict[str, object]:
    """The facts of ``detector``'s answer to ``data``, which must be a Match."""
    verdict = detector.detect(data)
    assert isinstance(verdict, Match), verdict
    return dict(verdict.facts)


def check_generated_match(
    detector: IDetector, data: bytes, expected: dict[str, object], cut: int
) -> None:
    """A generated valid message matches with the facts it was built from, not before."""
    assert match_facts(detector, data) == expected
    assert detector.detect(data[: cut % len(data)]) == NeedMore()
    assert detector.detect(data[:-1]) == NeedMore()


def check_needs_every_byte(detector: IDetector, data: bytes) -> None:
    """Every proper prefix of ``data`` is NeedMore."""
    for n in range(len(data)):
        assert detector.detect(data[:n]) == NeedMore()


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


KINDS: tuple[str, ...] = ("http", "ssh", "xmpp")


def detector_contract(detector: IDetector, kind: str, random_size: int) -> type:
    """
    The tests every protocol detector passes on its own and the others' fixtures.

    Its fixtures give their sidecar's verdict, whole and at every prefix, with the
    declared facts, and keep it whatever follows; the other detectors' matching
    fixtures are NoMatch; random bytes (up to ``random_size``) and mutated fixtures
    keep :func:`check_final`'s promises. A test module binds it to a ``Test*`` name.
    """
    fixtures = load(kind)
    others = [f for other in KINDS if other != kind for f in load(other) if f.matches]

    def random_bytes_keep_promises(self: object, data: bytes, suffix: bytes) -> None:
        check_final(detector, data, suffix)

    def mutated_fixtures_keep_promises(
        self: object, fixture: Fixture, edits: list[Any], suffix: bytes
    ) -> None:
        check_final(detector, mutate(fixture.data, edits), suffix)

    class DetectorContract:
        def test_declared_facts_are_the_reported_ones(self) -> None:
            for fixture in fixtures:
                verdict = detector.detect(fixture.data)
                if isinstance(verdict, Match):
                    # ``facts`` is optional on IDetector; each of these declares it.
                    assert tuple(verdict.facts) == cast(Any, detector).facts

        @parametrize(fixtures)
        def test_fixture_verdict(self, fixture: Fixture) -> None:
            check_verdict(detector, fixture)

        @parametrize(fixtures)
        def test_fixture_every_prefix(self, fixture: Fixture) -> None:
            check_every_prefix(detector, fixture)

        @FAST
        @given(st.sampled_from(fixtures), st.binary(max_size=64))
        def test_fixture_verdict_survives_appended_bytes(
            self, fixture: Fixture, suffix: bytes
        ) -> None:
            verdict = detector.detect(fixture.data)
            assert detector.detect(fixture.data + suffix) == verdict
            assert detector.detect(fixture.data[: fixture.decided_at] + suffix) == verdict

        @parametrize(others)
        def test_other_detectors_fixtures_do_not_match(self, fixture: Fixture) -> None:
            assert isinstance(detector.detect(fixture.data), NoMatch)

        test_random_bytes, test_random_bytes_slow = fast_and_slow(
            st.binary(max_size=random_size), st.binary(max_size=32)
        )(random_bytes_keep_promises)

        test_mutated_fixtures, test_mutated_fixtures_slow = fast_and_slow(
            st.sampled_from(fixtures), EDITS, st.binary(max_size=16)
        )(mutated_fixtures_keep_promises)

    return DetectorContract
