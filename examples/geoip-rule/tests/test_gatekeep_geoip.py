"""The example rule on its own: lookups, decisions, and what gatekeep checks of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from gatekeep_geoip import CountryRule, CountryTable
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from zope.interface.verify import verifyObject

from gatekeep.interfaces import IAccessRule
from gatekeep.values import Decision, Match

DATABASE = str(Path(__file__).parent.parent / "countries.csv")


def test_lookup() -> None:
    table = CountryTable.from_csv(DATABASE)
    assert len(table) == 5
    assert table.country("192.0.2.200") == "DE"
    assert table.country("198.51.100.0") == "FR"
    assert table.country("198.51.101.0") is None
    assert table.country("::ffff:192.0.2.1") == "DE"
    assert table.country("2001:db8:f4:1::9") == "FR"
    assert table.country("2001:db8:f5::1") is None
    assert table.country("10.0.0.1") is None
    assert table.country("not an address") is None


def test_overlaps_are_refused() -> None:
    with pytest.raises(ValueError, match="overlapping"):
        CountryTable([("10.0.0.0/8", "AA"), ("10.1.0.0/16", "BB")])


def test_decisions() -> None:
    rule = CountryRule(DATABASE, allow=["de", "FR"], deny=["XX"], default="deny")
    verifyObject(IAccessRule, rule)
    assert rule.decide(IPv4Address("TCP", "192.0.2.1", 1), None) is Decision.ALLOW
    assert rule.decide(IPv6Address("TCP", "2001:db8:f4::1", 1), Match({})) is Decision.ALLOW
    assert rule.decide(IPv4Address("TCP", "203.0.113.9", 1), None) is Decision.DENY
    assert rule.decide(IPv4Address("TCP", "8.8.8.8", 1), None) is Decision.DENY
    assert rule.decide(UNIXAddress(b"/run/x.sock"), None) is Decision.DENY
    assert rule.describe().startswith("countries (5 networks from ")
    assert rule.describe().endswith("deny XX; allow DE,FR; otherwise deny")


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="two-letter"):
        CountryRule(DATABASE, allow=["Germany"])
    with pytest.raises(ValueError, match="default"):
        CountryRule(DATABASE, default="maybe")
    with pytest.raises(FileNotFoundError):
        CountryRule("/no/such/countries.csv")
