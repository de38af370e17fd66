"""
Certificates and keys for TLS termination, chosen by SNI.

A :class:`CertificateStore` holds key pairs from three sources: explicit pairs
(``certificate_pairs``), a directory (``certificates``) and a default
(``default_certificate``). The names a pair serves come from its leaf's
subjectAltName DNS entries (the common name only when there are none). A lookup
tries the exact name, then the ``*.`` wildcard one label up, then the default.

A directory may hold, in any mix:

- ``NAME.pem``: the chain (leaf first) and its private key in one file;
- ``NAME.crt`` (or a key-less ``NAME.pem``) with ``NAME.key`` beside it;
- ``NAME/fullchain.pem`` with ``NAME/privkey.pem`` (certbot's ``live/`` layout).

Every problem is a :class:`CertificateProblem` naming the file and the reason, so
``gatekeep check`` can say exactly what to fix. Files replaced on disk are noticed
by :meth:`CertificateStore.refresh` (a cheap ``stat`` of every file, at most once a
second): new connections get the new pairs, and a half-written or broken set of
files leaves the previous pairs in use.
"""

from __future__ import annotations

import datetime
import itertools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

__all__ = [
    "CertificateProblem",
    "CertificateStore",
    "KeyPair",
    "PairSource",
    "load_ca_file",
    "load_pair",
    "scan_directory",
]

log = Logger()

#: Seconds between two looks at the files' modification times.
REFRESH_INTERVAL = 1.0

_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
              ed448.Ed448PrivateKey)


class CertificateProblem(ValueError):
    """A certificate or key file gatekeep cannot serve, and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@attrs.frozen(eq=False)
class KeyPair:
    """A leaf certificate with its chain and private key, and the names it serves."""

    source: str
    chain: tuple[x509.Certificate, ...]
    key: Any = attrs.field(repr=False)
    names: tuple[str, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def kind(self) -> str:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return f"RSA-{self.key.key_size}"
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return f"ECDSA-{self.key.curve.name}"
        return type(self.key).__name__.removeprefix("_").replace("PrivateKey", "")


@attrs.frozen
class PairSource:
    """Where one pair comes from: a combined file (``key`` None) or a cert and a key."""

    cert: str
    key: str | None = None

    def files(self) -> tuple[str, ...]:
        return (self.cert,) if self.key is None else (self.cert, self.key)


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateProblem(path, "no such file") from None
    except IsADirectoryError:
        raise CertificateProblem(path, "is a directory, not a PEM file") from None
    except OSError as error:
        raise CertificateProblem(path, f"cannot read it: {error.strerror}") from None


def _certificates(path: str | Path, data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateProblem(path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CertificateProblem(path, f"a certificate in it cannot be parsed: {error}") from None


def _has_key(data: bytes) -> bool:
    return b"PRIVATE KEY-----" in data


def _private_key(path: str | Path, data: bytes) -> Any:
    if not _has_key(data):
        raise CertificateProblem(path, "holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateProblem(path, "the private key is encrypted: gatekeep cannot ask for "
                                 "a passphrase (store it unencrypted, readable only by "
                                 "gatekeep)") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise CertificateProblem(path, f"the private key cannot be parsed: {error}") from None
    if not isinstance(key, _KEY_TYPES):
        raise CertificateProblem(path, f"unsupported key type {type(key).__name__} "
                                 "(use RSA or ECDSA)")
    return key


def _public(value: Any) -> bytes:
    return bytes(value.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo))


def names_of(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a leaf serves, lower case: its SANs, else its common name."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in
                 certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(n.rstrip(".").lower() for n in names if n))


def load_pair(source: PairSource) -> KeyPair:
    """Load and check one pair; raise :class:`CertificateProblem` naming the bad file."""
    cert_data = _read(source.cert)
    chain = _certificates(source.cert, cert_data)
    if source.key is None:
        key_path: str = source.cert
        key = _private_key(source.cert, cert_data)
    else:
        key_path = source.key
        key = _private_key(source.key, _read(source.key))
    if _public(chain[0].public_key()) != _public(key.public_key()):
        raise CertificateProblem(key_path, f"the private key does not belong to the first "
                                 f"certificate of {source.cert} (the leaf must come first)")
    for index, (child, parent) in enumerate(itertools.pairwise(chain)):
        if child.issuer != parent.subject:
            raise CertificateProblem(
                source.cert, f"the chain is out of order: certificate {index + 2} "
                f"({parent.subject.rfc4514_string()}) did not issue certificate {index + 1} "
                "(put the leaf first, then each issuer)")
    label = source.cert if source.key is None else f"{source.cert} + {source.key}"
    return KeyPair(label, tuple(chain), key, names_of(chain[0]))


def load_ca_file(path: str) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle (``client_ca``, ``trustRoots``)."""
    return _certificates(path, _read(path))


def directory_sources(directory: str) -> tuple[list[PairSource], list[CertificateProblem]]:
    """The pairs a certificates directory holds, and files that make no pair."""
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], [CertificateProblem(directory, "no such directory")]
    except NotADirectoryError:
        return [], [CertificateProblem(directory, "is not a directory")]
    except OSError as error:
        return [], [CertificateProblem(directory, f"cannot list it: {error.strerror}")]
    sources: list[PairSource] = []
    problems: list[CertificateProblem] = []
    present = set(entries)
    for entry in entries:
        path = os.path.join(directory, entry)
        stem, ext = os.path.splitext(entry)
        if os.path.isdir(path):
            chain, key = os.path.join(path, "fullchain.pem"), os.path.join(path, "privkey.pem")
            if os.path.exists(chain) or os.path.exists(key):
                sources.append(PairSource(chain, key))
        elif ext == ".crt" or ext == ".pem":
            if f"{stem}.key" in present:
                sources.append(PairSource(path, os.path.join(directory, f"{stem}.key")))
            elif ext == ".crt":
                problems.append(CertificateProblem(path, f"no {stem}.key beside it"))
            else:
                sources.append(PairSource(path))
    return sources, problems


def scan_directory(directory: str) -> tuple[list[KeyPair], list[CertificateProblem]]:
    sources, problems = directory_sources(directory)
    pairs = []
    for source in sources:
        try:
            pairs.append(load_pair(source))
        except CertificateProblem as problem:
            problems.append(problem)
    return pairs, problems


def _stamp(path: str) -> tuple[str, int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1, -1)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


@attrs.define(eq=False)
class CertificateStore:
    """
    The pairs of one ``terminate`` table, indexed by name, reloaded when files change.

    With no ``default`` pair the first pair loaded is the default (as nginx's first
    server is), unless the caller refuses unknown names (``strict_sni``).
    """

    directory: str | None = None
    pairs: tuple[PairSource, ...] = ()
    default: PairSource | None = None
    #: Everything loaded, in precedence order (explicit pairs, directory, default).
    loaded: tuple[KeyPair, ...] = ()
    default_pair: KeyPair | None = None
    _exact: dict[str, list[KeyPair]] = attrs.field(factory=dict, repr=False)
    _wild: dict[str, list[KeyPair]] = attrs.field(factory=dict, repr=False)
    _stamps: tuple[tuple[str, int, int, int], ...] = attrs.field(default=(), repr=False)
    _checked: float | None = attrs.field(default=None, repr=False)
    generation: int = 0

    def load(self) -> list[CertificateProblem]:
        """(Re)load every pair; on any problem keep what was loaded before."""
        stamps = self._current_stamps()
        problems: list[CertificateProblem] = []
        loaded: list[KeyPair] = []
        for source in self.pairs:
            try:
                loaded.append(load_pair(source))
            except CertificateProblem as problem:
                problems.append(problem)
        if self.directory is not None:
            found, bad = scan_directory(self.directory)
            loaded += found
            problems += bad
        default = None
        if self.default is not None:
            try:
                default = load_pair(self.default)
            except CertificateProblem as problem:
                problems.append(problem)
        self._stamps = stamps
        if problems:
            return problems
        if default is None and not loaded:
            where = self.directory or "certificate_pairs"
            return [CertificateProblem(where, "no certificates to serve (add NAME.pem, "
                                       "NAME.crt + NAME.key or NAME/fullchain.pem + "
                                       "NAME/privkey.pem, or certificate_pairs)")]
        self._index(loaded, default)
        return []

    def _index(self, loaded: list[KeyPair], default: KeyPair | None) -> None:
        exact: dict[str, list[KeyPair]] = {}
        wild: dict[str, list[KeyPair]] = {}
        for pair in [*loaded, *([default] if default is not None else [])]:
            for name in pair.names:
                if name.startswith("*."):
                    wild.setdefault(name[2:], []).append(pair)
                else:
                    exact.setdefault(name, []).append(pair)
        self.loaded = (*loaded, *([default] if default is not None else []))
        self.default_pair = default if default is not None else loaded[0]
        self._exact, self._wild = exact, wild
        self.generation += 1

    def _files(self) -> Iterable[str]:
        for source in self.pairs:
            yield from source.files()
        if self.default is not None:
            yield from self.default.files()
        if self.directory is not None:
            yield self.directory
            sources, _ = directory_sources(self.directory)
            for source in sources:
                yield from source.files()
                if source.key is not None and source.cert.endswith("fullchain.pem"):
                    yield os.path.dirname(source.cert)

    def _current_stamps(self) -> tuple[tuple[str, int, int, int], ...]:
        return tuple(_stamp(path) for path in self._files())

    def refresh(self, now: float) -> None:
        """Reload if any file changed since the last look (at most once a second)."""
        if self._checked is not None and now - self._checked < REFRESH_INTERVAL:
            return
        self._checked = now
        stamps = self._current_stamps()
        if stamps == self._stamps:
            return
        problems = self.load()
        if problems:
            for problem in problems:
                log.error("certificates changed on disk but cannot be used; the previous "
                          "ones stay in use: {problem}", problem=str(problem))
        else:
            log.info("certificates reloaded: {count} pair(s) from {where}",
                     count=len(self.loaded), where=self.describe())
            warn_expiry(self.loaded, datetime.datetime.now(datetime.UTC))

    def find(self, name: str | None, strict: bool) -> KeyPair | None:
        """The pair for an SNI name: exact, then wildcard, then (not strict) the default."""
        found = self.find_all(name, strict)
        return found[0] if found else None

    def find_all(self, name: str | None, strict: bool) -> tuple[KeyPair, ...]:
        """
        The pairs to offer for an SNI name: the first that fits (exact, then wildcard,
        then the default), and beside it the first of each other key type for the same
        name, so that OpenSSL serves ECDSA to clients that take it and RSA to the rest.
        """
        if name:
            name = name.rstrip(".").lower()
            candidates = self._exact.get(name)
            if candidates:
                return _one_per_kind(candidates)
            parent = name.partition(".")[2]
            candidates = self._wild.get(parent) if parent else None
            if candidates:
                return _one_per_kind(candidates)
        if strict or self.default_pair is None:
            return ()
        return (self.default_pair,)

    def describe(self) -> str:
        parts = []
        if self.directory is not None:
            parts.append(self.directory)
        parts += [p.cert for p in self.pairs]
        if self.default is not None:
            parts.append(f"default {self.default.cert}")
        return ", ".join(parts)


def _key_kind(pair: KeyPair) -> str:
    if isinstance(pair.key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(pair.key, ec.EllipticCurvePrivateKey):
        return "ec"
    return type(pair.key).__name__


def _one_per_kind(candidates: list[KeyPair]) -> tuple[KeyPair, ...]:
    chosen: dict[str, KeyPair] = {}
    for pair in candidates:
        chosen.setdefault(_key_kind(pair), pair)
    return tuple(chosen.values())  # the first candidate's kind comes first


def warn_expiry(pairs: Iterable[KeyPair], now: datetime.datetime) -> None:
    for pair in pairs:
        ends = pair.leaf.not_valid_after_utc
        if ends <= now:
            log.warn("certificate {source} expired on {ends}", source=pair.source,
                     ends=ends.isoformat())

