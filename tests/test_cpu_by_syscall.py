"""bench/cpu_by_syscall.py: perf samples charged to user space or to their system call."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

_PATH = Path(__file__).resolve().parents[1] / "bench" / "cpu_by_syscall.py"
_SPEC: Any = importlib.util.spec_from_file_location("cpu_by_syscall", _PATH)
tool: Any = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tool)  # a script in bench/, not a package: loaded from its file
parse_script, report, split = tool.parse_script, tool.report, tool.split

SCRIPT = """
\t          199d8a PyDict_SetItem (/usr/lib/libpython3.11.so.1.0)
\t    7f78b505bbe0 [unknown] ([unknown])

\tffffffff82045235 ipv4_default_advmss ([kernel.kallsyms])
\tffffffff8207dabe tcp_connect ([kernel.kallsyms])
\tffffffff81e76fff __sys_connect ([kernel.kallsyms])
\tffffffff81e77011 __x64_sys_connect ([kernel.kallsyms])
\tffffffff822ff0e8 do_syscall_64 ([kernel.kallsyms])
\t    7f78b50f1234 __libc_connect (/usr/lib/x86_64-linux-gnu/libc.so.6)

\tffffffff81000000 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
\tffffffff81000100 asm_sysvec_apic_timer_interrupt ([kernel.kallsyms])
\t          19aaaa _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)

\tffffffff81e80000 __fput ([kernel.kallsyms])
\tffffffff81e80100 __x64_sys_close ([kernel.kallsyms])
"""


def test_samples_are_charged_to_user_space_or_their_outermost_system_call() -> None:
    stacks = parse_script(SCRIPT)
    assert len(stacks) == 4
    assert stacks[1][0] == ("ipv4_default_advmss", "[kernel.kallsyms]")
    counts = split(stacks)
    assert counts == {"user": 1, "__x64_sys_connect": 1, "kernel, other": 1,
                      "__x64_sys_close": 1}
    lines = report(counts, connections=2, frequency=4000)
    assert lines[0].split()[0] == "500.0"  # 4 samples of 250 us over 2 connections
    # one sample each: 250 us over 2 connections
    assert any(line.strip() == "125.0 us  user" for line in lines[1:])
