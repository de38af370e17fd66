"""``gatekeep check`` and ``gatekeep explain``, run in-process."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from gatekeep.cli import main

CONFIG = textwrap.dedent("""
    [[listener]]
    name = "public"
    endpoint = "tcp:8443"
    service = "edge"

    [service.edge]
    default = "web"

    [[service.edge.route]]
    name = "xmpp-tls"
    match.tls = { sni = ["example.test"], alpn = ["xmpp-client"] }
    forward = { to = "tcp:127.0.0.1:5223" }

    [[service.edge.route]]
    name = "xmpp"
    match.xmpp = { to = ["example.test"] }
    forward = { to = "tcp:127.0.0.1:5222" }

    [[service.edge.route]]
    name = "web"
    match.http = {}
    forward = { to = "tcp:127.0.0.1:8080" }
""")

XMPP_HEADER = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
               b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gatekeep.toml"
    path.write_text(CONFIG)
    return path


def test_check_prints_the_route_table(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{config}: OK" in out
    assert "public  tcp:8443  -> service edge (detect_timeout 5s)" in out
    assert "service edge (default route: web)" in out
    lines = [line.strip() for line in out.splitlines()]
    assert any(line.startswith("1. xmpp-tls") and "tls sni=example.test alpn=xmpp-client"
               in line and line.endswith("-> forward to tcp:127.0.0.1:5223") for line in lines)
    assert any(line.startswith("3. web") for line in lines)


def test_check_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.replace('"tcp:127.0.0.1:5222"', '"tcp:127.0.0.1"'))
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: 1 error in config")
    assert "service.edge.route[1].forward.to: bad client endpoint string" in err
    assert "Traceback" not in err


def test_explain_xmpp(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(config), "--listener", "public",
                 "hex:" + XMPP_HEADER.hex()]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\bxmpp +match   to=example.test version=1.0 ns=jabber:client", out)
    assert "1. xmpp-tls: skipped  tls: no match" in out
    assert "2. xmpp: taken" in out
    assert "3. web: not reached" in out
    assert out.rstrip().endswith("result: route xmpp -> forward to tcp:127.0.0.1:5222")


def test_explain_waits_then_defaults(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "partial.bin"
    partial.write_bytes(XMPP_HEADER[:30])
    assert main(["explain", str(config), "--listener", "public", str(partial)]) == 0
    out = capsys.readouterr().out
    assert "the chain would wait for more bytes" in out
    assert "result: route web (the service's default)" in out


def test_explain_tls_fixture_from_a_capture(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = Path(__file__).parent / "fixtures" / "clienthello" / "openssl-xmpp.bin"
    assert main(["explain", str(config), "--listener", "public", str(fixture)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\btls +match   sni=example.test alpn=xmpp-client", out)
    assert "result: route xmpp-tls -> forward to tcp:127.0.0.1:5223" in out


def test_explain_unknown_listener(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(config), "--listener", "nope", "hex:00"]) == 1
    assert "no listener named 'nope'; listeners: public" in capsys.readouterr().err


def _gatekeep_command() -> list[str]:
    import sys

    return [sys.executable, "-c", "import sys; from gatekeep.cli import main; sys.exit(main())"]


def test_run_refuses_a_bad_config_without_traceback(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.replace("tcp:8443", "tcp:eighty"))
    done = subprocess.run([*_gatekeep_command(), "run", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert "listener[0].endpoint: bad server endpoint string 'tcp:eighty'" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.slow
def test_run_serves_the_config(tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess

    path = tmp_path / "gk.toml"
    path.write_text(CONFIG.replace('"tcp:8443"', '"tcp:0:interface=127.0.0.1"').replace(
        'name = "web"\nmatch.http = {}\nforward = { to = "tcp:127.0.0.1:8080" }',
        'name = "web"\nmatch.http = {}\n'
        'respond = { data = "HTTP/1.0 204 No Content\\r\\n\\r\\n" }'))
    process = subprocess.Popen([*_gatekeep_command(), "run", str(path)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "listener public listening on 127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1].split()[0])
                break
        else:
            pytest.fail("gatekeep run never listened")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.0 204")
        assert not (tmp_path / "twistd.pid").exists()  # run writes no pid file
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
