"""
Start a program the way systemd's socket activation does (for the tests).

    python sd_activate.py FD NAME -- PROGRAM ARGS...

Moves the listening socket FD to descriptor 3, sets LISTEN_FDS=1, LISTEN_FDNAMES=NAME
and LISTEN_PID to this process's id, then execs PROGRAM, which keeps that id.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    fd, name, dashes, *argv = sys.argv[1:]
    assert dashes == "--" and argv, __doc__
    if int(fd) != 3:
        os.dup2(int(fd), 3)  # inheritable, unlike most descriptors Python opens
        os.close(int(fd))
    os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES=name, LISTEN_PID=str(os.getpid()))
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
