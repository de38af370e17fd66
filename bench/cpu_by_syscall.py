"""
Where a proxy's CPU per connection goes: user space, and the kernel by system call.

Sample the proxy with perf's software clock while a load runs (no hardware counters
needed, so it works in a VM), then split the samples::

    perf record -e cpu-clock -F 4000 -g -p PID -o proxy.perf -- sleep 4
    python bench/cpu_by_syscall.py proxy.perf CONNECTIONS [--frequency 4000]

CONNECTIONS is how many connections the load completed while perf sampled. Each
kernel sample is charged to the outermost system call on its stack (``__sys_connect``,
``__x64_sys_close``...), so the figures compare directly between proxies making the
same calls; samples outside any system call (interrupts, scheduling) are shown as
``kernel, other``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable

_SYSCALL = re.compile(r"^(?:__(?:x64|ia32|arm64)_sys_\w+|__sys_\w+|__do_sys_\w+|do_epoll_wait)$")
_KERNEL = "[kernel.kallsyms]"


def split(samples: Iterable[list[tuple[str, str]]]) -> Counter[str]:
    """
    Samples as stacks of (symbol, object), innermost first, counted as ``user`` or by
    the outermost system call on the stack.
    """
    counts: Counter[str] = Counter()
    for stack in samples:
        if not stack:
            continue
        if stack[0][1] != _KERNEL:
            counts["user"] += 1
            continue
        calls = [symbol for symbol, _ in stack if _SYSCALL.match(symbol)]
        counts[calls[-1] if calls else "kernel, other"] += 1
    return counts


def parse_script(text: str) -> list[list[tuple[str, str]]]:
    """
    ``perf script -F ip,sym,dso`` output: per sample, blank-line separated, a line
    ``ADDRESS SYMBOL (OBJECT)`` per frame, innermost first.
    """
    stacks = []
    for block in re.split(r"\n\s*\n", text):
        stack = []
        for line in block.strip().splitlines():
            found = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
            if found:
                stack.append((found.group(1), found.group(2)))
        if stack:
            stacks.append(stack)
    return stacks


def report(counts: Counter[str], connections: int, frequency: float) -> list[str]:
    per_sample = 1e6 / frequency  # microseconds one sample stands for
    total = sum(counts.values())
    lines = [f"{total * per_sample / connections:8.1f} us per connection in all "
             f"({total} samples, {connections} connections)"]
    lines += [f"{count * per_sample / connections:8.1f} us  {name}"
              for name, count in counts.most_common()]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("perf_data")
    parser.add_argument("connections", type=int)
    parser.add_argument("--frequency", type=float, default=4000.0,
                        help="perf record's -F (samples per second)")
    args = parser.parse_args(argv)
    script = subprocess.run(["perf", "script", "-i", args.perf_data, "-F", "ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    for line in report(split(parse_script(script)), max(1, args.connections), args.frequency):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
