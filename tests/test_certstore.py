"""The certificate store: layouts, names, precedence, problems named by file, reloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gatekeep.certstore import CertificateStore, PairSource, load_pair
from tests.tlscerts import CA, make_ca


@pytest.fixture
def ca() -> CA:
    return make_ca()


def test_layouts_and_names(tmp_path: Path, ca: CA) -> None:
    ca.leaf("a.test", "www.a.test", kind="rsa").write_combined(tmp_path / "a.pem")
    ca.leaf("b.test").write_pair(tmp_path / "b.crt", tmp_path / "b.key")
    ca.leaf("c.test").write_pair(tmp_path / "c.pem", tmp_path / "c.key")
    certbot = tmp_path / "d"
    ca.leaf("*.d.test").write_pair(certbot / "fullchain.pem", certbot / "privkey.pem")
    (tmp_path / "README").write_text("certbot's")
    store = CertificateStore(str(tmp_path))
    assert store.load() == []
    assert [p.names for p in store.loaded] == [
        ("a.test", "www.a.test"), ("b.test",), ("c.test",), ("*.d.test",)]
    assert [p.kind for p in store.loaded] == ["RSA-2048", "ECDSA-secp256r1",
                                              "ECDSA-secp256r1", "ECDSA-secp256r1"]
    assert store.find("WWW.A.TEST.", strict=True).names[0] == "a.test"  # type: ignore[union-attr]
    assert store.find("x.d.test", strict=True).names == ("*.d.test",)  # type: ignore[union-attr]
    assert store.find("d.test", strict=True) is None  # never the bare parent
    assert store.find("y.x.d.test", strict=True) is None  # one label only
    assert store.find("nope.test", strict=False) is store.loaded[0]


def test_exact_beats_wildcard_and_explicit_beats_directory(tmp_path: Path, ca: CA) -> None:
    ca.leaf("*.e.test").write_combined(tmp_path / "1-wild.pem")
    ca.leaf("www.e.test").write_combined(tmp_path / "2-exact.pem")
    explicit = ca.leaf("www.e.test", common_name="explicit").write_combined(
        tmp_path.parent / "explicit.pem")
    store = CertificateStore(str(tmp_path), (PairSource(str(explicit)),))
    assert store.load() == []
    found = store.find("www.e.test", strict=True)
    assert found is not None and found.source == str(explicit)
    store = CertificateStore(str(tmp_path))
    store.load()
    found = store.find("www.e.test", strict=True)
    assert found is not None and found.source.endswith("2-exact.pem")


@pytest.mark.parametrize("case", ["mismatch", "encrypted", "no-key", "garbage", "order",
                                  "missing", "orphan-crt"])
def test_problems_name_the_file_and_the_reason(tmp_path: Path, ca: CA, case: str) -> None:
    from cryptography.hazmat.primitives import serialization

    leaf = ca.leaf("x.test")
    cert, key = tmp_path / "x.crt", tmp_path / "x.key"
    leaf.write_pair(cert, key)
    expected = {"mismatch": (key, "does not belong"), "encrypted": (key, "encrypted"),
                "no-key": (key, "no PEM private key"), "garbage": (cert, "cannot be parsed"),
                "order": (cert, "out of order"), "missing": (key, "no such file"),
                "orphan-crt": (cert, "no x.key beside it")}[case]
    if case == "mismatch":
        key.write_bytes(ca.leaf("x.test").key_pem())
    elif case == "encrypted":
        key.write_bytes(leaf.key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw")))
    elif case == "no-key":
        key.write_text("nothing here\n")
    elif case == "garbage":
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    elif case == "order":
        cert.write_bytes(ca.pem() + leaf.chain_pem())
        key.write_bytes(ca.key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        cert.write_bytes(ca.pem() + leaf.chain_pem())
        expected = (cert, "out of order")
    elif case in ("missing", "orphan-crt"):
        key.unlink()
    if case == "missing":
        problems = CertificateStore(None, (PairSource(str(cert), str(key)),)).load()
    else:
        problems = CertificateStore(str(tmp_path)).load()
    assert len(problems) == 1, problems
    assert problems[0].path == str(expected[0])
    assert expected[1] in problems[0].reason


def test_empty_directory_is_a_problem(tmp_path: Path) -> None:
    [problem] = CertificateStore(str(tmp_path)).load()
    assert "no certificates to serve" in problem.reason
    [problem] = CertificateStore(str(tmp_path / "nope")).load()
    assert problem.reason == "no such directory"


def test_replaced_files_are_used_after_a_refresh_and_broken_ones_are_not(
        tmp_path: Path, ca: CA) -> None:
    ca.leaf("r.test", common_name="first").write_combined(tmp_path / "r.pem")
    store = CertificateStore(str(tmp_path))
    store.load()
    first = store.find("r.test", strict=True)
    store.refresh(100.0)
    assert store.find("r.test", strict=True) is first  # nothing changed
    ca.leaf("r.test", common_name="second").write_combined(tmp_path / "new.pem")
    os.replace(tmp_path / "new.pem", tmp_path / "r.pem")
    store.refresh(100.5)  # less than a second later: not looked at yet
    assert store.find("r.test", strict=True) is first
    store.refresh(101.0)
    second = store.find("r.test", strict=True)
    assert second is not None and second is not first
    assert second.leaf.subject.rfc4514_string() == "CN=second"
    (tmp_path / "r.pem").write_text("half written")
    store.refresh(102.0)
    assert store.find("r.test", strict=True) is second  # the broken file is not used
    ca.leaf("new.test").write_combined(tmp_path / "added.pem")
    ca.leaf("r.test", common_name="third").write_combined(tmp_path / "r.pem")
    store.refresh(103.0)
    assert store.find("new.test", strict=True) is not None


def test_load_pair_combined_file_with_the_key_first(tmp_path: Path, ca: CA) -> None:
    leaf = ca.leaf("k.test")
    path = tmp_path / "k.pem"
    path.write_bytes(leaf.key_pem() + leaf.chain_pem())
    assert load_pair(PairSource(str(path))).names == ("k.test",)
