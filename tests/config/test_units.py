"""Sizes, durations and rates as users write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.config.units import format_duration, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5), ("2m", 120), ("1h30m", 5400), ("24h", 86400), ("1d", 86400),
     (3, 3.0), (0.25, 0.25), ("1.5s", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5", "5 seconds", "s", "", "-1s", True, -2, "1x", "5s5"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64KiB", 65536), ("1MiB", 1 << 20), ("2GB", 2 * 10**9), ("16k", 16384), (100, 100),
     ("1.5KiB", 1536)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "1 TiB", -1, False, "KiB"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_rates() -> None:
    assert parse_rate("2MiB/s") == (2 * 1024 * 1024, "bytes")
    assert parse_rate("20/s") == (20.0, "events")
    assert parse_rate("120/m") == (2.0, "events")
    with pytest.raises(ValueError, match="rate"):
        parse_rate("fast")


@given(st.integers(min_value=1, max_value=10**7))
def test_format_duration_round_trips(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
