"""Token-bucket properties, for any sequence of arrivals (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeep.shapers.bucket import Bucket, TokenBucket

steps = st.lists(st.tuples(st.floats(0, 2, allow_nan=False), st.integers(1, 5)),
                 min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.5, 50), burst=st.integers(1, 20), arrivals=steps)
def test_connections_let_in_never_exceed_burst_plus_rate(
    rate: float, burst: int, arrivals: list[tuple[float, int]],
) -> None:
    bucket = Bucket(rate, burst, 0.0)
    now = 0.0
    admitted = 0
    for gap, tries in arrivals:
        now += gap
        admitted += sum(bucket.take(now) for _ in range(tries))
        assert admitted <= burst + rate * now + 1e-6


@settings(max_examples=300, deadline=None)
@given(rate=st.integers(100, 100_000), burst=st.integers(1, 100_000),
       reads=st.lists(st.integers(1, 65536), min_size=1, max_size=300))
def test_a_producer_that_obeys_never_runs_ahead(
    rate: int, burst: int, reads: list[int],
) -> None:
    """Reading only when told: bytes by time t <= burst + rate * t + the last read."""
    shaper = TokenBucket(rate=float(rate), burst=burst)
    now = 0.0
    passed = 0
    for size in reads:
        passed += size
        assert passed <= burst + rate * now + size + 1e-6
        now += shaper.admit(size, now)  # paused until the debt is paid
    # ... and it is not slowed more than needed: done when the debt is paid.
    assert now <= max(0.0, (passed - burst) / rate) + 1e-6
