"""
Test-wide settings.

Every gatekeep the tests start runs as one process unless its config sets
``workers``: the suite checks behaviour, and ``workers = N`` (default: the number of
cores) has its own tests in tests/integration/test_workers.py. Subprocesses inherit
this through the environment.

The tests that run on the real reactor in this process run on gatekeep's event loop
(gatekeep.eventloop), as ``twistd gatekeep`` does; ``GATEKEEP_EVENTLOOP=twisted``
runs them (and the gatekeeps the tests start) on Twisted's own epoll reactor.
"""

from __future__ import annotations

import os

from twisted.internet import reactor

from gatekeep.eventloop import coalesce

os.environ.setdefault("GATEKEEP_WORKERS", "1")
coalesce(reactor)
