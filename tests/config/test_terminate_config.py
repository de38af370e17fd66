"""Loading terminate tables: certificate problems by file and reason, links, combinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeep.cli import main
from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.registry import Registry, load_registry
from gatekeep.targets.terminate import TerminateTarget
from tests.tlscerts import make_ca

BASE = """
[[listener]]
name = "edge"
endpoint = "tcp:8443"
service = "edge"

[service.edge]

[[service.edge.route]]
name = "web"
match.tls = {{ sni = ["example.test"] }}
terminate = {{ {terminate} }}

[service.inner]

[[service.inner.route]]
name = "site"
forward = {{ to = "tcp:127.0.0.1:8080", proxy_protocol = "v2", proxy_tlvs = ["ssl"] }}
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    ca = make_ca()
    ca.leaf("example.test").write_combined(tmp_path / "example.pem")
    ca.write(tmp_path.parent / f"{tmp_path.name}-ca.pem")
    return tmp_path


def errors(text: str, registry: Registry) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(text, registry)
    return [str(e) for e in caught.value.errors]


def test_good_terminate_links_the_inner_service(certs: Path, registry: Registry) -> None:
    config = load_config(BASE.format(
        terminate=f'certificates = "{certs}", alpn = ["h2"], service = "inner"'), registry)
    target = config.services["edge"].routes[0].target
    assert isinstance(target, TerminateTarget)
    assert target.inner is config.services["inner"]
    assert "tls" in target.detectors
    # The inner service is used (by the terminate route): no "not used" warning.
    assert config.warnings == ()
    assert target.describe() == ("terminate TLS (1 certificate, ALPN h2), then service inner")


def test_bad_key_is_reported_with_file_and_reason(certs: Path, registry: Registry) -> None:
    (certs / "broken.crt").write_bytes((certs / "example.pem").read_bytes())
    (certs / "broken.key").write_bytes(make_ca().leaf("x").key_pem())
    [error] = errors(BASE.format(terminate=f'certificates = "{certs}", service = "inner"'),
                     registry)
    assert error.startswith("service.edge.route[0].terminate: certificate problem: "
                            f"{certs}/broken.key: the private key does not belong to the "
                            f"first certificate of {certs}/broken.crt")


def test_unknown_inner_service(certs: Path, registry: Registry) -> None:
    text = BASE.format(terminate=f'certificates = "{certs}", service = "innr"')
    assert errors(text, registry) == [
        "service.edge.route[0].terminate.service: no service named 'innr'\n"
        "    fix: define [service.innr] with the routes for the decrypted stream"]


def test_own_service_is_refused(certs: Path, registry: Registry) -> None:
    text = BASE.format(terminate=f'certificates = "{certs}", service = "edge"')
    [error] = errors(text, registry)
    assert "hands the decrypted stream back to its own service 'edge'" in error


@pytest.mark.parametrize(("option", "message"), [
    ('versions = ["TLSv1.1", "TLSv1.3"]', "range without gaps"),
    ('versions = ["SSLv3"]', "unknown TLS version 'SSLv3'"),
    ('ciphers = "NOTHING-AT-ALL"', "OpenSSL accepts no cipher"),
    ('client_certificates = "required"', "needs client_ca"),
    ('client_certificates = "sometimes"', 'expected "none", "optional" or "required"'),
    ('alpn = "h2"', "expected a list of ALPN protocol ids"),
    ('certificate_pairs = [{ crt = "x" }]', "expected a table"),
    ('handshake_timeout = "0s"', "longer than zero"),
])
def test_bad_options(certs: Path, registry: Registry, option: str, message: str) -> None:
    text = BASE.format(terminate=f'certificates = "{certs}", service = "inner", {option}')
    [error] = errors(text, registry)
    assert message in error


def test_check_lists_the_route_and_reports_bad_files(
    certs: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str],
) -> None:
    where = tmp_path_factory.mktemp("check")
    good = where / "good.toml"
    good.write_text(BASE.format(terminate=f'certificates = "{certs}", service = "inner"'))
    assert main(["check", str(good)]) == 0
    assert "terminate TLS (1 certificate), then service inner" in capsys.readouterr().out
    (certs / "example.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    assert main(["check", str(good)]) == 1
    output = capsys.readouterr()
    assert f"{certs}/example.pem: a certificate in it cannot be parsed" in output.out + output.err


def test_the_tested_prosody_module_is_the_shipped_one() -> None:
    # The Prosody fixture loads mod_gk_proxy_secure from contrib/ itself, and no copy
    # elsewhere in the tree can shadow it on Prosody's plugin path.
    from tests.integration.proxy_peers import CONTRIB, MODULES

    root = Path(__file__).resolve().parents[2]
    assert root / "contrib" / "prosody" == CONTRIB
    assert (CONTRIB / "mod_gk_proxy_secure.lua").is_file()
    assert not (MODULES / "mod_gk_proxy_secure.lua").exists()
