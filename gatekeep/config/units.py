"""
Parsers for the human units in config: sizes, durations and rates.

Each raises ValueError with a message that says what a valid value looks like,
so the loader can put it next to the TOML path.
"""

from __future__ import annotations

import re

__all__ = [
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_positive_rate",
    "parse_rate",
    "parse_size",
]

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "k": 1024, "m": 1024**2, "g": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """``"64KiB"``, ``"1MiB"``, ``"1.5GB"`` or a plain integer of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as \"64KiB\" or \"1MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"{value!r} is not a size: use e.g. \"16KiB\", \"1MiB\", \"2GB\" or bytes")


def parse_duration(value: object) -> float:
    """``"500ms"``, ``"3s"``, ``"2m"``, ``"24h"``, ``"1d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"5s\"")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", value)
        rebuilt = "".join(n + u for n, u in parts)
        if parts and rebuilt == re.sub(r"\s+", "", value):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(f"{value!r} is not a duration: use e.g. \"500ms\", \"5s\", \"2m\", \"1h30m\"")


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`, for route tables and docs."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:.12g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.12g}{unit}"
    return f"{seconds:.12g}s"


def format_size(size: float) -> str:
    """``1048576`` -> ``"1MiB"``; sizes that are not whole units stay in bytes."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size / scale:.12g}{unit}"
    return f"{size:.12g}B"


def parse_rate(value: object) -> tuple[float, str]:
    """``"2MiB/s"`` -> (bytes per second, "bytes"); ``"20/s"`` -> (events, "events")."""
    if isinstance(value, str) and "/" in value:
        amount, _, per = value.partition("/")
        seconds = parse_duration("1" + per.strip()) if per.strip().isalpha() else None
        if seconds:
            amount = amount.strip()
            if amount.replace(".", "", 1).isdigit():
                return float(amount) / seconds, "events"
            return parse_size(amount) / seconds, "bytes"
    raise ValueError(f"{value!r} is not a rate: use e.g. \"2MiB/s\" (bytes) or \"20/s\" (events)")


def parse_positive_rate(value: object, unit: str, other_unit: str) -> float:
    """
    A rate of ``unit`` (``"bytes"`` or ``"events"``) a second, more than zero.

    A rate of the other unit is refused with ``other_unit`` after the value: what the
    setting counts instead, with an example.
    """
    rate, found = parse_rate(value)
    if found != unit:
        raise ValueError(f"{value!r} {other_unit}")
    if rate <= 0:
        raise ValueError("must be more than zero")
    return rate
