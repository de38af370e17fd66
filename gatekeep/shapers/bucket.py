"""
Token buckets: the built-in shaper kind (``bucket``) and the connection-rate limit.

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second. The
shaper lets data through at once and goes into debt for it: the returned delay
is how long the producer must pause until the debt is paid, so over any long
stretch exactly ``rate`` bytes a second pass, whatever the read sizes.
"""

from __future__ import annotations

import attrs
from zope.interface import implementer

from gatekeep.config.schema import setting
from gatekeep.config.units import parse_positive_rate, parse_size
from gatekeep.interfaces import IShaper

__all__ = ["Bucket", "TokenBucket"]


class Bucket:
    """``burst`` tokens, refilled at ``rate`` a second; time comes from the caller."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if there are that many (a connection let in)."""
        self._refill(now)
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def spend(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens, into debt if need be; the seconds until it is paid."""
        self._refill(now)
        self.tokens -= amount
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def full(self, now: float) -> bool:
        """Whether the bucket is back to ``burst`` (it can be forgotten)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


def _byte_rate(value: object) -> float:
    return parse_positive_rate(
        value, "bytes", 'counts events; a shaper needs bytes, e.g. "1MiB/s"'
    )


def _burst(value: object) -> int:
    size = parse_size(value)
    if size < 1:
        raise ValueError("must be at least one byte")
    return size


@implementer(IShaper)
@attrs.define(eq=False)
class TokenBucket:
    """
    `kind = "bucket"` (the default): a token bucket of bytes. Each direction (to
    and from the client) is shaped on its own; over a long transfer the rate is
    `rate`, after a first `burst` that passes at full speed.
    """

    rate: float = setting(
        'Bytes a second, e.g. `"1MiB/s"`, `"500KB/s"`, `"8MiB/m"`.', parse=_byte_rate)
    burst: int | None = setting(
        "How many bytes may pass at full speed after a quiet spell (the bucket's size), "
        'e.g. `"4MiB"`. At least one read (64 KiB) is best; smaller makes the relay '
        "pause after every read.",
        default=None, parse=_burst, shown="one second of `rate`")
    _bucket: Bucket | None = attrs.field(default=None, init=False, repr=False)

    def admit(self, nbytes: int, now: float) -> float:
        bucket = self._bucket
        if bucket is None:
            size = self.burst if self.burst is not None else max(1.0, self.rate)
            bucket = self._bucket = Bucket(self.rate, size, now)
        return bucket.spend(nbytes, now)

    def describe(self) -> str:
        from gatekeep.config.units import format_size

        burst = format_size(self.burst) if self.burst is not None else "1s"
        return f"{format_size(self.rate)}/s, burst {burst}"
