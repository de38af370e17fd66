"""Sizes, durations and rates as users write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.config.units import (
    format_duration,
    parse_duration,
    parse_positive_rate,
    parse_rate,
    parse_size,
)


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



def test_positive_rates_of_one_unit() -> None:
    assert parse_positive_rate("20/m", "events", "is bytes") == pytest.approx(20 / 60)
    assert parse_positive_rate("2KiB/s", "bytes", "is events") == 2048
    with pytest.raises(ValueError, match=r"^'2KiB/s' is bytes, not events$"):
        parse_positive_rate("2KiB/s", "events", "is bytes, not events")
    with pytest.raises(ValueError, match=r"^'20/s' is events$"):
        parse_positive_rate("20/s", "bytes", "is events")
    for zero in ("0/s", "0B/s"):
        unit = parse_rate(zero)[1]
        with pytest.raises(ValueError, match="must be more than zero"):
            parse_positive_rate(zero, unit, "is the other unit")
    with pytest.raises(ValueError, match="is not a rate"):
        parse_positive_rate("20", "events", "is bytes")

@given(st.integers(min_value=1, max_value=10**7))
def test_format_duration_round_trips(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
