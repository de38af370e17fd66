"""
TLS termination per SNI against a running gatekeep, with Python's ssl as the client.

- Each SNI gets its own certificate (and an unknown one the default route's).
- ``a.example`` requires a client certificate, ``b.example`` does not. A session
  (TLS 1.2 session id or ticket, TLS 1.3 ticket) obtained from ``b.example`` and
  offered with SNI ``a.example`` must not resume into ``a.example`` without a client
  certificate: the class of nginx's CVE-2025-23419. Resumption itself works within a
  name, so the refusal is not an accident of resumption being off.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.hostile.harness import start_backend, start_gatekeep
from tests.integration.peers import Gatekeep
from tests.tlscerts import CA, make_ca

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "tls"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[service.edge]
[[service.edge.route]]
name = "a"
match.tls = {{ sni = ["a.example"] }}
[service.edge.route.terminate]
certificate_pairs = [{{ cert = "{d}/a.crt", key = "{d}/a.key" }}]
client_certificates = "required"
client_ca = "{d}/ca.pem"
service = "inner"
[[service.edge.route]]
name = "b"
match.tls = {{ sni = ["b.example"] }}
[service.edge.route.terminate]
certificate_pairs = [{{ cert = "{d}/b.crt", key = "{d}/b.key" }}]
service = "inner"

[service.inner]
[[service.inner.route]]
name = "echo"
forward = {{ to = "tcp:127.0.0.1:{port}" }}
"""


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca("hostile TLS CA")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[tuple[Gatekeep, Path]]:
    root = tmp_path_factory.mktemp("tls-sni")
    d = root / "certs"
    d.mkdir()
    ca.write(d / "ca.pem")
    ca.leaf("a.example").write_pair(d / "a.crt", d / "a.key")
    ca.leaf("b.example").write_pair(d / "b.crt", d / "b.key")
    ca.leaf("client.example", client=True).write_pair(d / "client.crt", d / "client.key")
    backend = start_backend(root / "backend", echo=True)
    gatekeep = start_gatekeep(root / "gk", CONFIG.format(d=d, port=backend.port), ["tls"])
    yield gatekeep, d
    gatekeep.stop()
    backend.stop()
    assert not gatekeep.problems(), gatekeep.problems()


def client_context(d: Path, version: ssl.TLSVersion, cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(d / "ca.pem")
    context.minimum_version = context.maximum_version = version
    if cert:
        context.load_cert_chain(d / "client.crt", d / "client.key")
    return context


def talk(port: int, context: ssl.SSLContext, name: str,
         session: ssl.SSLSession | None = None) -> tuple[str, ssl.SSLSession | None, bool]:
    """Handshake as ``name``, echo a line; (served name, session, resumed). Raises if refused."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=name, session=session) as tls:
        tls.sendall(b"ping\n")
        got = b""
        while len(got) < 5:
            chunk = tls.recv(64)
            if not chunk:
                raise ConnectionError(f"closed after {got!r}")
            got += chunk
        assert got == b"ping\n"
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        served = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)[0]
        return served, tls.session, bool(tls.session_reused)


VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_each_sni_gets_its_certificate(site: tuple[Gatekeep, Path],
                                       version: ssl.TLSVersion) -> None:
    gatekeep, d = site
    port = gatekeep.port("tls")
    assert talk(port, client_context(d, version, cert=True), "a.example")[0] == "a.example"
    assert talk(port, client_context(d, version, cert=False), "b.example")[0] == "b.example"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_client_certificate_required_for_a(site: tuple[Gatekeep, Path],
                                           version: ssl.TLSVersion) -> None:
    gatekeep, d = site
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        talk(gatekeep.port("tls"), client_context(d, version, cert=False), "a.example")


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_resumption_works_within_a_name(site: tuple[Gatekeep, Path],
                                        version: ssl.TLSVersion) -> None:
    gatekeep, d = site
    port = gatekeep.port("tls")
    for name, cert in (("a.example", True), ("b.example", False)):
        context = client_context(d, version, cert=cert)
        _, session, _ = talk(port, context, name)
        assert session is not None
        served, _, resumed = talk(port, context, name, session)
        assert served == name
        assert resumed, f"{name}: {version.name} session not resumed"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.name)
def test_session_from_b_does_not_open_a_without_client_certificate(
        site: tuple[Gatekeep, Path], version: ssl.TLSVersion) -> None:
    gatekeep, d = site
    port = gatekeep.port("tls")
    context = client_context(d, version, cert=False)
    _, session, _ = talk(port, context, "b.example")
    assert session is not None
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        served, _, resumed = talk(port, context, "a.example", session)
        pytest.fail(f"served {served} (resumed={resumed}) without a client certificate")
