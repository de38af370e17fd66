"""
Certificates for TLS tests, made on the fly: a private CA and leaves it signs,
RSA or ECDSA, with any SANs, written in any of the layouts terminate reads.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "Leaf", "key_pem", "make_ca", "scratch_dir"]


def _key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@attrs.frozen
class Leaf:
    certificate: x509.Certificate
    key: object
    chain: tuple[x509.Certificate, ...]  # the leaf, then the CA

    def chain_pem(self) -> bytes:
        return b"".join(cert_pem(c) for c in self.chain)

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def write_combined(self, path: Path) -> Path:
        path.write_bytes(self.chain_pem() + self.key_pem())
        return path

    def write_pair(self, cert: Path, key: Path) -> tuple[Path, Path]:
        cert.parent.mkdir(parents=True, exist_ok=True)
        cert.write_bytes(self.chain_pem())
        key.write_bytes(self.key_pem())
        return cert, key


@attrs.frozen
class CA:
    certificate: x509.Certificate
    key: object

    def pem(self) -> bytes:
        return cert_pem(self.certificate)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem())
        return path

    def leaf(self, *names: str, kind: str = "ec", client: bool = False,
             days: int = 30, common_name: str | None = None) -> Leaf:
        key = _key(kind)
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(
            NameOID.COMMON_NAME, common_name or (names[0] if names else "client"))])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())  # type: ignore[arg-type]
        return Leaf(certificate, key, (certificate, self.certificate))


def make_ca(name: str = "gatekeep test CA", kind: str = "ec") -> CA:
    key = _key(kind)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CA(certificate, key)


def scratch_dir(testcase: Any) -> Path:
    """A temporary directory removed after the test (not trial's mktemp(): under
    pytest that writes into the working tree)."""
    path = tempfile.mkdtemp(prefix="gatekeep-tls-test-")
    testcase.addCleanup(shutil.rmtree, path, True)
    return Path(path)
