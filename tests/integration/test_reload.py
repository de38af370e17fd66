"""
Reload under continuous load: 20 SIGHUPs (and one bad config) while clients keep
connecting through gatekeep to an echo backend. Not one connection may fail, the
connections open since before the first reload keep working, new connections
follow the new config, and listeners added and removed open and close.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.ops_support import EchoServer, Load, exchange, http_get
from tests.integration.peers import Gatekeep, twistd
from tests.integration.process import free_port, port_open

pytestmark = pytest.mark.slow

RELOADS = 20


def config(echo: int, admin: int, route: str, extra_port: int | None = None) -> str:
    text = f"""\
drain_timeout = "5s"
[admin]
endpoint = "tcp:{admin}:interface=127.0.0.1"

[[listener]]
name = "public"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
detect_timeout = "200ms"
"""
    if extra_port is not None:
        text += f"""
[[listener]]
name = "extra"
endpoint = "tcp:{extra_port}:interface=127.0.0.1"
service = "edge"
detect_timeout = "200ms"
"""
    return text + f"""
[service.edge]
default = "{route}"

[[service.edge.route]]
name = "{route}"
forward = {{ to = "tcp:127.0.0.1:{echo}" }}
"""


def reload_with(gatekeep: Gatekeep, path: Path, text: str, pidfile: Path, use_cli: bool) -> str:
    """Write the config, signal, and return the log line that answered."""
    path.write_text(text)
    mark = gatekeep.mark()
    if use_cli:
        done = subprocess.run([sys.executable, "-m", "gatekeep.cli", "reload", "--pidfile",
                               str(pidfile), "--check", str(path)],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
    else:
        os.kill(gatekeep.pid, signal.SIGHUP)
    return gatekeep.log.wait_for(lambda line: "reload applied" in line or "reload rejected"
                                 in line, mark, timeout=20, what="the reload's outcome")


def test_twenty_reloads_under_load_drop_nothing(tmp_path: Path, echo: EchoServer) -> None:
    admin, extra = free_port(), free_port()
    path, pidfile = tmp_path / "gatekeep.toml", tmp_path / "gatekeep.pid"
    path.write_text(config(echo.port, admin, "r0"))
    gatekeep = Gatekeep([twistd(), "-n", f"--pidfile={pidfile}", "gatekeep", "--config", path],
                        tmp_path, ["public"])
    load = Load(gatekeep.port("public"))
    try:
        # Long-lived connections accepted under the first config.
        held = [socket.create_connection(("127.0.0.1", gatekeep.port("public")), timeout=10)
                for _ in range(3)]
        for sock in held:
            exchange(sock, b"before\n")
        load.start()
        for number in range(1, RELOADS + 1):
            # Every fourth reload adds the extra listener; the one after removes it.
            with_extra = number % 4 == 1
            line = reload_with(gatekeep, path, config(echo.port, admin, f"r{number}",
                                                      extra if with_extra else None),
                               pidfile, use_cli=number % 2 == 0)
            assert "reload applied" in line, line
            assert port_open("127.0.0.1", extra) == with_extra
            # A new connection takes the new route ...
            mark = gatekeep.mark()
            with socket.create_connection(("127.0.0.1", gatekeep.port("public")), 10) as sock:
                exchange(sock, b"after %d\n" % number)
            gatekeep.connection(mark, route=f"r{number}")
            # ... and the old ones still relay.
            for sock in held:
                exchange(sock, b"still here %d\n" % number)
            if number == 10:
                bad = reload_with(gatekeep, path, "[[listener]]\nname = 'x'\n", pidfile,
                                  use_cli=False)
                assert "reload rejected" in bad, bad
                gatekeep.log.wait_for(lambda t: "missing required key" in t, 0, 5,
                                      what="the bad config's errors in the log")
                path.write_text(config(echo.port, admin, f"r{number}"))
        load.stop()
        for sock in held:
            exchange(sock, b"last\n")
            sock.close()
        assert load.failures == [], load.failures[:10]
        assert load.ok >= 50, f"only {load.ok} connections in {RELOADS} reloads"
        status, _, body = http_get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200
        assert re.search(r'^gatekeep_reloads_total\{outcome="applied"\} 20\.0$', body, re.M)
        assert re.search(r'^gatekeep_reloads_total\{outcome="rejected"\} 1\.0$', body, re.M)
        failed = re.findall(r'^gatekeep_connections_total\{[^}]*outcome="(?!ok)[^"]*"\S* (\S+)',
                            body, re.M)
        assert failed == [], body
        print(f"{load.ok} connections through {RELOADS} reloads, 0 failed")
    finally:
        load.stop()
        gatekeep.stop()
    problems = [p for p in gatekeep.problems() if "reload rejected" not in p]
    assert problems == []
