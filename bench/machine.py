"""What the benchmark ran on: CPU, cores, kernel, OS, tools, and how busy the machine was."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

__all__ = ["busy_fraction", "machine_info"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _hypervisor() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return "virtual machine" if " hypervisor" in flags else "bare metal"


def _tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already included in user
    return total - idle, total


def busy_fraction(seconds: float = 1.0) -> float:
    """How busy the whole machine is (0..1 of all cores) over ``seconds``, before we load it."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(1, total1 - total0)


def machine_info() -> dict[str, str | int | float]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "kernel": platform.release(),
        "os": _os_name(),
        "platform": _hypervisor(),
        "python": platform.python_version(),
        "wrk": _tool_version(["wrk", "-v"]),
        "loadavg": Path("/proc/loadavg").read_text().split()[0],
    }
