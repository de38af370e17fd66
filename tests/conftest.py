"""
Test-wide settings.

Every gatekeep the tests start runs as one process unless its config sets
``workers``: the suite checks behaviour, and ``workers = N`` (default: the number of
cores) has its own tests in tests/integration/test_workers.py. Subprocesses inherit
this through the environment.
"""

from __future__ import annotations

import os

os.environ.setdefault("GATEKEEP_WORKERS", "1")
