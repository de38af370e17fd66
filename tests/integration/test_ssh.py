"""
Scenario 5: SSH goes to sshd.

An SSH client that speaks first (its identification line) is detected at once; one
that waits for the server's banner first, as ssh-keyscan does, is served by the
default route after ``detect_timeout``. Either way the host key that comes back
through gatekeep must be our sshd's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.clients import require, run, tcp_exchange
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, Sshd, Web

pytestmark = pytest.mark.slow

DETECT_TIMEOUT = 1.0

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
detect_timeout = "{timeout}s"

[service.edge]
default = "server-first"

[[service.edge.route]]
name = "ssh"
match.ssh = {{}}
forward = {{ to = "tcp:127.0.0.1:{ssh}" }}

[[service.edge.route]]
name = "web"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{http}" }}

[[service.edge.route]]
name = "server-first"
forward = {{ to = "tcp:127.0.0.1:{ssh}" }}
"""


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, sshd: Sshd, web: Web) -> Gatekeep:
    config = CONFIG.format(timeout=DETECT_TIMEOUT, ssh=sshd.port, http=web.http_port)
    return gatekeep_runner(config, ["edge"])


def test_client_banner_is_detected_and_sshd_answers(gatekeep: Gatekeep, sshd: Sshd) -> None:
    mark = gatekeep.mark()
    reply, elapsed = tcp_exchange(("127.0.0.1", gatekeep.port("edge")),
                                  b"SSH-2.0-gatekeep_test\r\n", until=b"\r\n", timeout=5)
    assert reply.startswith(b"SSH-2.0-OpenSSH_"), reply
    assert elapsed < DETECT_TIMEOUT, "detected by its banner, not by the timeout"
    line = gatekeep.connection(mark, route="ssh")
    assert line.protocol == "ssh"
    assert line.backend == f"tcp:127.0.0.1:{sshd.port}"


def test_ssh_client_gets_our_host_key(gatekeep: Gatekeep, sshd: Sshd, tmp_path: Path) -> None:
    require("ssh")
    known_hosts = tmp_path / "known_hosts"
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    # No account can log in: the point is the key exchange, which records the host key.
    options = ["BatchMode=yes", f"UserKnownHostsFile={known_hosts}",
               "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=accept-new",
               "HostKeyAlgorithms=ssh-ed25519", "ConnectTimeout=5"]
    result = run(["ssh", "-F", "/dev/null", "-p", str(port),
                  *(arg for option in options for arg in ("-o", option)),
                  "nobody@127.0.0.1", "true"], timeout=20)
    assert "Permission denied" in result.stderr, result.stderr
    kind, blob = sshd.public_key()
    assert f"[127.0.0.1]:{port} {kind} {blob}" in known_hosts.read_text()
    line = gatekeep.connection(mark, route="ssh")
    assert line.protocol == "ssh"


def test_ssh_keyscan_returns_the_host_key(gatekeep: Gatekeep, sshd: Sshd) -> None:
    require("ssh-keyscan")
    port = gatekeep.port("edge")
    mark = gatekeep.mark()
    sshd_before = len(sshd.peer.output())
    result = run(["ssh-keyscan", "-T", "5", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
                 timeout=20)
    assert result.returncode == 0, result.stderr
    kind, blob = sshd.public_key()
    assert result.stdout.split() == [f"[127.0.0.1]:{port}", kind, blob], result.stdout
    # ssh-keyscan waits for the server's banner before sending its own, so gatekeep
    # sees nothing and the default route (to the same sshd) takes it at the deadline.
    assert result.elapsed >= DETECT_TIMEOUT
    line = gatekeep.connection(mark, backend=f"tcp:127.0.0.1:{sshd.port}")
    assert line.route == "server-first", line.raw
    new = sshd.peer.output()[sshd_before:]
    assert "Connection from 127.0.0.1 port " in new, new[-2000:]
