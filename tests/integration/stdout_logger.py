"""A twistd ``--logger`` for tests: twisted's text observer on stdout, built by twistd."""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, textFileLogObserver


def observer() -> ILogObserver:
    return textFileLogObserver(sys.stdout)
