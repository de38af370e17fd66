"""
Optional sampling profile of gatekeep with py-spy (``run.py --profile``).

py-spy attaches to the running twistd by pid and writes "collapsed" stacks (one
line per distinct stack with its sample count); :func:`hotspots` turns them into
the functions that use the most samples, by own time and including callees.
Profiling slows gatekeep down, so a profiled run's figures are not comparable.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["Profiler", "hotspots", "py_spy_path"]

_LINE_NUMBER = re.compile(r":\d+\)$")


def py_spy_path() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` on one pid, from :meth:`start` to :meth:`stop`."""

    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        py_spy = py_spy_path()
        if py_spy is None:
            raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
        log = self.output.with_suffix(".py-spy.log").open("wb")
        self.process = subprocess.Popen(
            [py_spy, "record", "--pid", str(self.pid), "--rate", str(self.rate),
             "--format", "raw", "--output", str(self.output), "--nonblocking"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def stop(self) -> None:
        if self.process is None:
            return
        # py-spy writes its output when interrupted (or when the target exits).
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


def hotspots(collapsed: Path, top: int = 10, focus: str = "gatekeep/") -> list[str]:
    """
    The ``top`` functions by own samples (with their share including callees), then
    the ``top`` functions whose file path contains ``focus``, by share with callees.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return ["(no samples)"]
    lines = [f"{total} samples; by own time:"]
    lines += [f"  {n / total:6.1%} own, {inclusive[name] / total:6.1%} with callees: {name}"
              for name, n in own.most_common(top)]
    lines.append(f"in {focus}, by time with callees:")
    mine = [(name, n) for name, n in inclusive.most_common() if focus in name][:top]
    lines += [f"  {n / total:6.1%} with callees: {name}" for name, n in mine]
    return lines
