"""
Backend faults: a backend that refuses, one that dies mid-stream, one that black-holes.

- Refused (nothing listens): the client gets its protocol's error (HTTP 502, a TLS
  alert, an XMPP stream error; SSH and plain TCP a close) within 1 s; the HTTP
  reverse proxy answers 502 too.
- Dies mid-stream (the scripted backend sends, then resets): the client sees the
  close within 1 s, downloading or uploading.
- The same through ``terminate``: a refused or dying backend closes the TLS client
  within 1 s.
- Black hole (a backend whose accept queue is full, so SYNs go unanswered): the
  route's ``connect_timeout`` is honoured (504 / TLS alert / stream error at 1 s, not
  at the kernel's ~2 minutes), also for the HTTP proxy's ``connect_timeout``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.harness import exchange, start_backend, start_gatekeep
from tests.integration.peers import Gatekeep
from tests.integration.process import free_port
from tests.tlscerts import make_ca

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HELLO = (FIXTURES / "clienthello" / "curl.bin").read_bytes()
XMPP = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
HTTP = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"
SSH = b"SSH-2.0-OpenSSH_9.2p1\r\n"

SERVICE = """
[[listener]]
name = "{name}"
endpoint = "tcp:0:interface={iface}"
service = "{name}"
detect_timeout = "2s"

[service.{name}]
[[service.{name}.route]]
name = "tls"
match.tls = {{}}
connect_timeout = "1s"
forward = {{ to = "tcp:{host}:{port}" }}
[[service.{name}.route]]
name = "xmpp"
match.xmpp = {{}}
connect_timeout = "1s"
forward = {{ to = "tcp:{host}:{port}" }}
[[service.{name}.route]]
name = "ssh"
match.ssh = {{}}
connect_timeout = "1s"
forward = {{ to = "tcp:{host}:{port}" }}
[[service.{name}.route]]
name = "site"
match.http = {{ path = ["/site"] }}
http = "{name}"
[[service.{name}.route]]
name = "http"
match.http = {{}}
connect_timeout = "1s"
forward = {{ to = "tcp:{host}:{port}" }}

[http.{name}]
connect_timeout = "1s"
[[http.{name}.route]]
name = "all"
to = "tcp:{host}:{port}"
"""

DIES = """
[[listener]]
name = "dies"
endpoint = "tcp:0:interface=127.0.0.1"
service = "dies"
[service.dies]
[[service.dies.route]]
name = "all"
forward = {{ to = "tcp:127.0.0.1:{port}" }}
"""


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port that takes no connection: backlog 0, already full, never accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


@pytest.fixture(scope="module")
def gatekeep(tmp_path_factory: pytest.TempPathFactory, blackhole: int) -> Iterator[Gatekeep]:
    config = (SERVICE.format(name="refused", iface="127.0.0.1", host="127.0.0.1",
                             port=free_port())
              + SERVICE.format(name="blackhole", iface="127.0.0.2", host="127.0.0.1",
                               port=blackhole))
    started = start_gatekeep(tmp_path_factory.mktemp("faults"), config, ["refused", "blackhole"])
    yield started
    started.stop()
    assert not started.problems(), started.problems()


def check_answer(protocol: str, got: bytes, kind: str) -> None:
    if protocol == "tls":
        assert got == bytes([0x15, 3, 1, 0, 2, 2, 80]), got  # fatal internal_error
    elif protocol == "xmpp":
        assert b"<remote-connection-failed" in got, got
    elif protocol in ("http", "site"):
        status = b" 502 " if kind == "refused" else (b" 504 ", b" 502 ")
        head = got.split(b"\r\n", 1)[0]
        assert any(s in head for s in ((status,) if isinstance(status, bytes) else status)), got
    else:
        assert got == b"", got


INPUTS = {"tls": HELLO, "xmpp": XMPP, "http": HTTP, "site": HTTP.replace(b"/ ", b"/site "),
          "ssh": SSH}


@pytest.mark.parametrize("protocol", sorted(INPUTS))
def test_backend_refuses(gatekeep: Gatekeep, protocol: str) -> None:
    got, took = exchange(gatekeep.port("refused"), INPUTS[protocol])
    check_answer(protocol, got, "refused")
    print(f"refused {protocol}: answered in {took * 1000:.0f} ms")
    assert took <= 1.0


@pytest.mark.parametrize("protocol", sorted(INPUTS))
def test_backend_black_hole(gatekeep: Gatekeep, protocol: str) -> None:
    got, took = exchange(gatekeep.port("blackhole"), INPUTS[protocol], host="127.0.0.2")
    check_answer(protocol, got, "timeout")
    print(f"black hole {protocol}: answered in {took * 1000:.0f} ms (connect_timeout 1 s)")
    assert 0.9 <= took <= 2.0


@pytest.fixture(scope="module")
def dies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("dies")
    backend = start_backend(root / "backend")
    gk = start_gatekeep(root / "gk", DIES.format(port=backend.port), ["dies"])
    yield gk.port("dies")
    gk.stop()
    backend.stop()
    assert not gk.problems(), gk.problems()


@pytest.mark.parametrize("size", [0, 1, 100_000, 4_000_000])
def test_backend_dies_while_sending(dies: int, size: int) -> None:
    got, took = exchange(dies, f"DIE {size}\n".encode())
    print(f"backend reset after {size} bytes: client closed after {took * 1000:.0f} ms")
    assert len(got) <= size
    assert took <= 1.0


def test_backend_dies_while_client_uploads(dies: int) -> None:
    with socket.create_connection(("127.0.0.1", dies), timeout=10) as sock:
        sock.sendall(b"DIE 0\n")
        started = time.monotonic()
        block = b"x" * 65536
        closed = None
        while time.monotonic() - started < 5:
            try:
                sock.sendall(block)
            except (BrokenPipeError, ConnectionResetError):
                closed = time.monotonic() - started
                break
        assert closed is not None, "the client could upload for 5 s into a dead backend"
        print(f"backend reset during an upload: client's sends fail after {closed * 1000:.0f} ms")
        assert closed <= 1.0


# ------------------------------------------------------------------ through terminate

TERMINATED = """
[[listener]]
name = "tls"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
[service.edge]
[[service.edge.route]]
name = "dies"
match.tls = {{ sni = ["dies.example"] }}
terminate = {{ certificate_pairs = [{{ cert = "{cert}", key = "{key}" }}], service = "dies" }}
[[service.edge.route]]
name = "refused"
match.tls = {{ sni = ["refused.example"] }}
terminate = {{ certificate_pairs = [{{ cert = "{cert}", key = "{key}" }}], service = "refused" }}
[service.dies]
[[service.dies.route]]
name = "dies"
forward = {{ to = "tcp:127.0.0.1:{port}" }}
[service.refused]
[[service.refused.route]]
name = "refused"
forward = {{ to = "tcp:127.0.0.1:{refused}" }}
"""


@pytest.fixture(scope="module")
def terminated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("terminated")
    leaf = make_ca().leaf("dies.example", "refused.example")
    cert, key = leaf.write_pair(root / "c.pem", root / "k.pem")
    backend = start_backend(root / "backend")
    gk = start_gatekeep(root / "gk", TERMINATED.format(
        cert=cert, key=key, port=backend.port, refused=free_port()), ["tls"])
    yield gk.port("tls")
    gk.stop()
    backend.stop()
    assert not gk.problems(), gk.problems()


def tls_exchange(port: int, name: str, data: bytes) -> tuple[bytes, float]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        started = time.monotonic()
        tls.sendall(data)
        got = b""
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            while chunk := tls.recv(65536):
                got += chunk
        return got, time.monotonic() - started


def test_terminated_backend_refuses(terminated: int) -> None:
    got, took = tls_exchange(terminated, "refused.example", b"hello, anyone there?\n")
    print(f"terminated, backend refused: client closed after {took * 1000:.0f} ms")
    assert got == b""
    assert took <= 1.0


@pytest.mark.parametrize("size", [0, 200_000])
def test_terminated_backend_dies_mid_stream(terminated: int, size: int) -> None:
    got, took = tls_exchange(terminated, "dies.example", f"DIE {size}\n".encode())
    print(f"terminated, backend reset after {size} bytes: client closed after "
          f"{took * 1000:.0f} ms with {len(got)} bytes")
    assert len(got) <= size
    assert took <= 1.0
