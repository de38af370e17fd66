#!/usr/bin/env python3
"""
Detection cost: microseconds per connection for each built-in detector, on the
captured client bytes in tests/fixtures (ClientHellos of Chromium, curl, OpenSSL,
Python, slixmpp; HTTP requests; XMPP stream headers; SSH banners).

For every fixture it times two things, with ``timeit`` (best of 5):

- ``whole``: one ``detect()`` on the complete first flight (what a connection
  whose first segment carries it costs);
- ``chain``: what the listener's chain pays for the connection on the service of
  bench/run.py (``tls`` route, then the catch-all), fed the bytes in 1,400-byte
  segments: ``run_detectors`` on each growing prefix, until the route is chosen.

    .venv/bin/python bench/detectors.py            # a table, one row per fixture
    .venv/bin/python bench/detectors.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SEGMENT = 1400


def _fixtures() -> list[tuple[str, str, bytes]]:
    found = []
    for kind in ("clienthello", "http", "xmpp", "ssh"):
        for path in sorted((FIXTURES / kind).glob("*.bin")):
            found.append((kind, path.stem, path.read_bytes()))
    return found


def _time(call: Any, number: int) -> float:
    """Microseconds per call: the best of 5 rounds of ``number`` calls."""
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def measure() -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from gatekeep.registry import load_registry
    from gatekeep.sniff import run_detectors
    from gatekeep.values import NeedMore

    detectors = load_registry().detectors
    detector_of = {"clienthello": "tls", "http": "http", "xmpp": "xmpp", "ssh": "ssh"}
    chain = {"tls": detectors["tls"]}  # bench/run.py's service: tls, then a catch-all
    rows = []
    for kind, name, data in _fixtures():
        detector = detectors[detector_of[kind]]
        prefix = data[:detector.max_prefix]
        whole = _time(lambda d=detector, p=prefix: d.detect(p), 2000)
        segments = [data[:end] for end in range(SEGMENT, len(data), SEGMENT)] + [data]

        def through_chain(segments: list[bytes] = segments) -> None:
            verdicts: dict[str, Any] = {}
            for seen in segments:
                run_detectors(chain, seen, verdicts, final=False)
                if not isinstance(verdicts["tls"], NeedMore):
                    return

        rows.append({"kind": kind, "fixture": name, "bytes": len(data),
                     "detector": detector.name, "whole_us": round(whole, 2),
                     "chain_us": round(_time(through_chain, 2000), 2)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = measure()
    header = f"{'fixture':<34} {'bytes':>6} {'detector':<8} {'whole us':>9} {'chain us':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['kind'] + '/' + row['fixture']:<34} {row['bytes']:>6} "
              f"{row['detector']:<8} {row['whole_us']:>9.2f} {row['chain_us']:>9.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
