"""
Coverage-guided fuzzing of every sniffer with atheris (libFuzzer).

A program, not collected by pytest (``test_atheris_sniffers.py`` runs each target for
a few seconds)::

    python -m tests.hostile.fuzz_sniffers NAME [libFuzzer flags] [CORPUS_DIR ...]

NAME is one of :data:`tests.hostile.sniffers.SNIFFERS` (``tls``, ``xmpp``, ``http``,
``ssh``, ``proxy``, ``proxy-required``, ``proxy-optional``, ``mqtt``). A long run, a
million inputs or more, growing the kept corpus (see docs/hostile-input.md)::

    python -m tests.hostile.fuzz_sniffers tls -runs=1000000 -max_len=4096 \\
        -artifact_prefix=/tmp/ /tmp/grown-tls tests/hostile/corpus/tls

and to keep what it found, minimised, in the repository's corpus::

    python -m tests.hostile.fuzz_sniffers tls -merge=1 -max_len=4096 \\
        tests/hostile/corpus/tls /tmp/grown-tls

An input is a crash when the detector raises, when a verdict depends on where the
input is cut into reads, when a NeedMore is given past ``max_prefix``, or when a fact
is not safe text (names validated for charset and length, nothing unprintable) or
would not stay on one log line.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["gatekeep", "gatekeep_mqtt", "tests.hostile"]):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "mqtt-detector"))
    import gatekeep_mqtt  # noqa: F401 - instrumented here, loaded by sniffers.mqtt_detector

    from gatekeep.connlog import format_facts
    from gatekeep.values import Match, NeedMore, Verdict
    from tests.hostile.sniffers import SNIFFERS, check_verdict_text

PREAMBLES = {"proxy-required", "proxy-optional"}
TARGET_ENV = "GATEKEEP_FUZZ_TARGET"


def make_target(name: str) -> object:
    sniffer = SNIFFERS[name]
    detector = sniffer.detector()
    limit = detector.max_prefix

    def one_input(data: bytes) -> None:
        final: Verdict = detector.detect(data)
        if isinstance(final, NeedMore) and len(data) >= limit:
            raise AssertionError(f"NeedMore past max_prefix ({len(data)} >= {limit})")
        if isinstance(final, Match) and name not in PREAMBLES:
            check_verdict_text(final)
            line = format_facts(final.facts)
            if not line.isprintable():
                raise AssertionError(f"facts would break the log line: {line!r}")
        # Split independence: a shorter prefix is undecided or already says the same.
        size = len(data)
        for cut in {size // 2, size - 1, (size * 7) // 8, data[0] % (size + 1) if data else 0}:
            if 0 <= cut < size:
                early = detector.detect(data[:cut])
                if not isinstance(early, NeedMore) and early != final:
                    raise AssertionError(f"verdict depends on the split at {cut}: "
                                         f"{early!r} != {final!r}")

    return one_input


def _relauncher() -> str:
    """
    An executable that runs this harness again: libFuzzer's ``-merge=1`` (minimising
    a corpus) starts ``argv[0]`` as a program, and a module path is not one.
    """
    script = Path(tempfile.gettempdir()) / f"gatekeep-fuzz-{os.getuid()}.sh"
    script.write_text(f'#!/bin/sh\ncd {shlex.quote(str(Path.cwd()))} && '
                      f'exec {shlex.quote(sys.executable)} -m tests.hostile.fuzz_sniffers "$@"\n')
    script.chmod(0o700)
    return str(script)


def main() -> None:
    args = sys.argv[1:]
    name = args.pop(0) if args and args[0] in SNIFFERS else os.environ.get(TARGET_ENV, "")
    if name not in SNIFFERS:
        sys.exit(f"usage: python -m tests.hostile.fuzz_sniffers {{{','.join(SNIFFERS)}}} "
                 "[libFuzzer flags] [corpus dirs]")
    os.environ[TARGET_ENV] = name  # for the copies -merge=1 starts
    program = _relauncher() if any(a.startswith("-merge") for a in args) else sys.argv[0]
    atheris.Setup([program, *args], make_target(name))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
