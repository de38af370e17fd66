"""
Real clients for the integration tests: curl, socat, headless Chromium, OpenSSL,
ssh-keyscan, Python's ssl module and the slixmpp login script (``xmpp_login.py``).

Each runs with a deadline; a client that overruns it is killed by its process
group id (Chromium forks helpers) and the test fails instead of hanging.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from tests.integration.process import stop_pid

__all__ = [
    "CHROMIUM",
    "CurlResult",
    "Result",
    "TLSResult",
    "chromium_dump_dom",
    "chromium_screenshot",
    "curl",
    "require",
    "run",
    "slixmpp_python",
    "socat_exchange",
    "tcp_exchange",
    "tls_handshake",
    "xmpp_login",
]

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


def require(program: str) -> str:
    """The path of ``program``; skip the test without it (fail in CI, which installs it)."""
    found = shutil.which(program)
    if found is None:
        message = f"{program} is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@attrs.frozen
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def run(argv: Sequence[str | Path], timeout: float = 20.0, stdin: bytes | None = None,
        env: dict[str, str] | None = None) -> Result:
    """Run a client to completion; on timeout kill its whole process group and fail."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(a) for a in argv], stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{argv[0]} did not finish within {timeout:g}s: "
                    f"{out.decode(errors='replace')}{err.decode(errors='replace')}")
    return Result(proc.returncode, out.decode("utf-8", "replace"),
                  err.decode("utf-8", "replace"), time.monotonic() - started)


# ---------------------------------------------------------------- curl

_MARK = "\n@@curl@@ "


@attrs.frozen
class CurlResult:
    returncode: int
    status: int
    body: str
    local_ip: str
    local_port: int
    http_version: str
    stderr: str

    @property
    def client(self) -> str:
        """The client address as gatekeep logs it."""
        host = f"[{self.local_ip}]" if ":" in self.local_ip else self.local_ip
        return f"{host}:{self.local_port}"


def curl(*args: str | Path, timeout: float = 15.0) -> CurlResult:
    argv = ["curl", "-sS", "--max-time", f"{timeout - 2:g}", "--write-out",
            _MARK + "%{http_code}|%{local_ip}|%{local_port}|%{http_version}", *args]
    result = run(argv, timeout=timeout)
    body, _, tail = result.stdout.rpartition(_MARK)
    status, local_ip, local_port, version = [*tail.strip().split("|"), "", "", "", ""][:4]
    return CurlResult(result.returncode, int(status or 0), body, local_ip,
                      int(local_port or 0), version, result.stderr)


# ---------------------------------------------------------------- raw exchanges

def _read_until(fd: int, until: bytes | None, deadline: float) -> bytes:
    received = b""
    while until is None or until not in received:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        received += chunk
    return received


def socat_exchange(address: str, data: bytes, until: bytes | None = None,
                   timeout: float = 10.0) -> bytes:
    """
    Send ``data`` through ``socat - ADDRESS`` and return what comes back.

    Our side stays open (no EOF) until ``until`` arrived, the server closed, or the
    deadline passed; then socat is stopped by its PID. When the server closes, socat
    exits 0.2 s later (``-t``), which ends the output.
    """
    proc = subprocess.Popen(["socat", "-t", "0.2", "-", address], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
        return _read_until(proc.stdout.fileno(), until, time.monotonic() + timeout)
    finally:
        stop_pid(proc)
        proc.stdin.close()
        proc.stdout.close()


def tcp_exchange(address: tuple[str, int], data: bytes, until: bytes | None = None,
                 timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection; return what came back and how long it took."""
    started = time.monotonic()
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        if data:
            sock.sendall(data)
        received = _read_until(sock.fileno(), until, started + timeout)
    return received, time.monotonic() - started


@attrs.frozen
class TLSResult:
    ok: bool
    version: str | None
    alpn: str | None
    error: str


def tls_handshake(port: int, server_name: str, alpn: Sequence[str], cafile: Path,
                  timeout: float = 10.0) -> TLSResult:
    """A TLS handshake with Python's ssl module (the certificate is verified)."""
    context = ssl.create_default_context(cafile=str(cafile))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=server_name) as tls:
            return TLSResult(True, tls.version(), tls.selected_alpn_protocol(), "")
    except (OSError, ssl.SSLError) as error:
        return TLSResult(False, None, None, f"{type(error).__name__}: {error}")


# ---------------------------------------------------------------- Chromium

def _chromium(url: str, resolve: str, home: Path, options: list[str],
              timeout: float) -> Result:
    """
    Headless Chromium on ``url`` with ``options``; ``resolve`` = ``"MAP name 127.0.0.1"``.

    Everything Chromium writes (profile, cache, crash database) goes under ``home``;
    any other name fails to resolve, so nothing leaves the machine.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={home / 'profile'}",
        f"--host-resolver-rules={resolve}, MAP * ~NOTFOUND", *options, url,
    ]
    return run(argv, timeout=timeout, env=env)


def chromium_dump_dom(url: str, resolve: str, home: Path, timeout: float = 90.0) -> Result:
    """``chromium --headless --dump-dom URL``, any certificate accepted, no QUIC."""
    options = ["--disable-quic", "--ignore-certificate-errors", "--dump-dom"]
    return _chromium(url, resolve, home, options, timeout)


def chromium_screenshot(url: str, png: Path, home: Path, resolve: str, size: str = "1100,900",
                        timeout: float = 90.0) -> Result:
    """``chromium --headless --screenshot=PNG URL`` in a window of ``size``."""
    options = ["--hide-scrollbars", f"--window-size={size}", f"--screenshot={png}"]
    return _chromium(url, resolve, home, options, timeout)


# ---------------------------------------------------------------- XMPP

def slixmpp_python() -> str:
    """An interpreter that can import slixmpp: ours (``pip install -e '.[test]'``) or the lab's."""
    if importlib.util.find_spec("slixmpp") is not None:
        return sys.executable
    lab = Path(os.environ.get("LAB_VENV", "/tmp/lab-venv")) / "bin" / "python"
    if lab.exists():
        return str(lab)
    message = "slixmpp is not installed (pip install -e '.[test]' installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def xmpp_login(port: int, jid: str, password: str, cafile: Path, *, direct_tls: bool,
               alpn: Sequence[str] = (), sni: str | None = None, bind: str | None = None,
               timeout: float = 15.0) -> Result:
    argv: list[str | Path] = [
        slixmpp_python(), HERE / "xmpp_login.py", "--host", "127.0.0.1", "--port", str(port),
        "--jid", jid, "--password", password, "--cafile", cafile, "--timeout", f"{timeout:g}"]
    if direct_tls:
        argv.append("--direct-tls")
    for protocol in alpn:
        argv += ["--alpn", protocol]
    if sni:
        argv += ["--sni", sni]
    if bind:
        argv += ["--bind", bind]
    return run(argv, timeout=timeout + 10)
