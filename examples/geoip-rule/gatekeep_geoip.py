"""
A GeoIP-style access rule for gatekeep: allow or deny clients by country.

An example of a third-party rule kind. It reads a CSV of ``network,country``
lines (the shape of MaxMind's GeoLite2 "Country-Blocks" files once joined with
their locations, or of any home-made list) once, when gatekeep loads the config,
and then answers from memory: ``decide`` runs for every connection on gatekeep's
reactor thread, so it must never touch the disk or the network.

    [access.europe]
    kind = "geoip"
    database = "/etc/gatekeep/countries.csv"
    allow = ["DE", "FR", "NL"]
    default = "deny"
"""

from __future__ import annotations

import bisect
import csv
import ipaddress
import itertools
from collections.abc import Iterable
from typing import Any

from zope.interface import implementer

from gatekeep.interfaces import IAccessRule
from gatekeep.values import Decision, Match

__all__ = ["CountryRule", "CountryTable"]


class CountryTable:
    """Non-overlapping networks and their country codes, searched by bisection."""

    def __init__(self, rows: Iterable[tuple[str, str]]) -> None:
        ranges: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
        for network_text, country in rows:
            network = ipaddress.ip_network(network_text.strip(), strict=True)
            ranges[network.version].append((int(network.network_address),
                                             int(network.broadcast_address),
                                             country.strip().upper()))
        self._starts: dict[int, list[int]] = {}
        self._ranges: dict[int, list[tuple[int, int, str]]] = {}
        for version, found in ranges.items():
            found.sort()
            for (_, end, _), (start, _, _) in itertools.pairwise(found):
                if start <= end:
                    raise ValueError(f"overlapping networks in the database near "
                                     f"{ipaddress.ip_address(start)}")
            self._ranges[version] = found
            self._starts[version] = [start for start, _, _ in found]

    @classmethod
    def from_csv(cls, path: str) -> CountryTable:
        with open(path, newline="", encoding="utf-8") as file:
            rows = [(row[0], row[1]) for row in csv.reader(file)
                    if row and not row[0].startswith("#") and row[0] != "network"]
        return cls(rows)

    def __len__(self) -> int:
        return sum(len(r) for r in self._ranges.values())

    def country(self, host: str) -> str | None:
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value = int(ip)
        index = bisect.bisect_right(self._starts[ip.version], value) - 1
        if index < 0:
            return None
        _, end, country = self._ranges[ip.version][index]
        return country if value <= end else None


def _codes(value: Any, key: str) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(
            isinstance(v, str) and len(v) == 2 for v in value):
        raise ValueError(f"{key}: expected a list of two-letter country codes")
    return frozenset(v.upper() for v in value)


@implementer(IAccessRule)
class CountryRule:
    """``kind = "geoip"``: allow or deny by the client's country; deny wins."""

    def __init__(self, database: str, allow: list[str] | None = None,
                 deny: list[str] | None = None, default: str = "allow") -> None:
        if default not in ("allow", "deny"):
            raise ValueError(f'default: expected "allow" or "deny", not {default!r}')
        self.database = database
        self.table = CountryTable.from_csv(database)
        self.allow = _codes(allow or [], "allow")
        self.deny = _codes(deny or [], "deny")
        self.default = Decision.ALLOW if default == "allow" else Decision.DENY

    def decide(self, peer: Any, match: Match | None) -> Decision:
        host = getattr(peer, "host", None)
        country = self.table.country(host) if isinstance(host, str) else None
        if country in self.deny:
            return Decision.DENY
        if country in self.allow:
            return Decision.ALLOW
        return self.default

    def describe(self) -> str:
        parts = []
        if self.deny:
            parts.append("deny " + ",".join(sorted(self.deny)))
        if self.allow:
            parts.append("allow " + ",".join(sorted(self.allow)))
        parts.append(f"otherwise {self.default.value}")
        return (f"countries ({len(self.table)} networks from {self.database}): "
                + "; ".join(parts))
