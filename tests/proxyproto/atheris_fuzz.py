"""
Coverage-guided fuzzing of the PROXY parser with atheris (libFuzzer).

Run as a program, not collected by pytest (``test_atheris.py`` runs it for a bounded
number of inputs): ``python -m tests.proxyproto.atheris_fuzz -runs=200000``.
Every input is parsed whole and split at every point; an exception, a verdict
that changes with the split, or a header that cannot be rebuilt is a crash.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from gatekeep.proxyproto import (
        MAX_V2_LENGTH,
        Incomplete,
        ProxyHeader,
        build,
        parse,
    )


def one_input(data: bytes) -> None:
    result = parse(data)
    if isinstance(result, Incomplete) and len(data) >= MAX_V2_LENGTH:
        raise AssertionError("still waiting past the v2 length cap")
    if isinstance(result, ProxyHeader):
        again = parse(build(result))
        if again != result:
            raise AssertionError(f"rebuilt header differs: {again!r} != {result!r}")
    for size in range(len(data)):
        early = parse(data[:size])
        if not isinstance(early, Incomplete):
            if early != result:
                raise AssertionError(f"verdict depends on the split at {size}")
            break


#: Starting points for the corpus directory ``test_atheris.py`` gives libFuzzer.
SEEDS = [
    b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET",
    b"PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 1 65535\r\n",
    b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    bytes.fromhex("0d0a0d0a000d0a515549540a20000000"),
    bytes.fromhex("0d0a0d0a000d0a515549540a2111000cc0000201c6336401dc0401bb"),
    bytes.fromhex("0d0a0d0a000d0a515549540a21110018c0000201c6336401dc0401bb"
                  "010002683203000412e81190"),
]


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
