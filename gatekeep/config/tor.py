"""
``[listener.tor]``: the settings of an onion-service listener.

Every check that can be made without talking to tor is made here, so ``gatekeep
check`` catches a bad key, path or client-auth line before a tor is ever started.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil

import attrs

from gatekeep.config.endpoints import client_endpoint_problem
from gatekeep.config.schema import setting

__all__ = ["TorSettings", "parse_client_auth", "tor_problems"]

#: ``descriptor:x25519:<base32 public key>``, the line tor reads from an
#: ``authorized_clients/*.auth`` file (a 32-byte key is 52 base32 characters).
_AUTH_LINE = re.compile(r"^descriptor:x25519:([A-Za-z2-7]{52})=*$")


def _ports(value: object) -> tuple[int, ...]:
    listed = value if isinstance(value, list) else [value]
    if not listed:
        raise ValueError("list at least one onion port, e.g. ports = [80, 5222]")
    ports: list[int] = []
    for port in listed:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"{port!r} is not a port number (1-65535)")
        if port in ports:
            raise ValueError(f"port {port} is listed twice")
        ports.append(port)
    return tuple(ports)


def _absolute_path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("expected a path string")
    if not os.path.isabs(value):
        # A running tor would resolve it against its own working directory.
        raise ValueError(f"{value!r} is not an absolute path")
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a path cannot contain line breaks or NUL")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("expected a non-empty string")
    return value


def _control(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError('expected a client endpoint string such as "tcp:127.0.0.1:9051"')
    problem = client_endpoint_problem(value)
    if problem:
        raise ValueError(problem + ' (examples: "tcp:127.0.0.1:9051", "unix:/run/tor/control")')
    return value


def parse_client_auth(value: object) -> tuple[str, ...]:
    """Client-auth lines, normalised to tor's spelling (upper-case base32, no padding)."""
    listed = value if isinstance(value, list) else [value]
    lines: list[str] = []
    for entry in listed:
        match = _AUTH_LINE.match(entry) if isinstance(entry, str) else None
        if match is None:
            raise ValueError(
                f"{entry!r} is not an authorized-client line: expected "
                "\"descriptor:x25519:<52 base32 characters>\", the public half of a key "
                "pair made for the client (see docs/recipes/onion.md)")
        key = match.group(1).upper()
        try:
            base64.b32decode(key + "====")
        except binascii.Error as error:  # pragma: no cover - the pattern rules it out
            raise ValueError(f"{entry!r}: bad base32: {error}") from None
        line = f"descriptor:x25519:{key}"
        if line in lines:
            raise ValueError(f"client {key[:8]}... is listed twice")
        lines.append(line)
    return tuple(lines)


@attrs.frozen
class TorSettings:
    """
    ``[listener.tor]``: the listener is a v3 onion service instead of an `endpoint`.

    gatekeep launches its own tor, or uses a running one through its control port, and
    publishes a service whose streams tor delivers with a PROXY line naming the
    circuit (`HiddenServiceExportCircuitID haproxy`): that circuit is the client in logs.
    TCP listeners serve at once; the onion listener follows when tor is ready.
    """

    ports: tuple[int, ...] = setting(
        "Onion virtual ports, all fed to this listener's service (e.g. `[80, 5222]`).",
        parse=_ports,
    )
    key_dir: str = setting(
        "Absolute path of the onion service's directory (tor's `HiddenServiceDir`): its "
        "v3 key lives there, created if missing, so the .onion address stays the same "
        "across restarts. Back it up; anyone with it can impersonate the service. It must "
        "belong to the user tor runs as, with mode 0700.",
        parse=_absolute_path,
    )
    control: str | None = setting(
        "Client endpoint string of a running tor's control port (`tcp:127.0.0.1:9051`, "
        "`unix:/run/tor/control`). Absent: gatekeep launches its own tor.",
        default=None, parse=_control, shown="none (launch a tor)",
    )
    control_password: str | None = setting(
        "Password for the control port (tor's `HashedControlPassword`); when set, it is "
        "used even if tor also offers its cookie.",
        default=None, parse=_text, shown="none",
    )
    control_cookie: str | None = setting(
        "Absolute path of the control port's authentication cookie, read instead of the "
        "path tor announces. With neither this nor `control_password`, gatekeep uses what "
        "tor offers (its cookie file, or no authentication).",
        default=None, parse=_absolute_path, shown="none",
    )
    client_auth: tuple[str, ...] = setting(
        "Authorized clients (v3 client authorization), in tor's `authorized_clients` "
        "format: `\"descriptor:x25519:<BASE32 PUBLIC KEY>\"`. Empty: anyone who knows the "
        "address can connect.",
        default=(), parse=parse_client_auth, shown="`[]`",
    )
    tor_binary: str | None = setting(
        "The tor program gatekeep launches (only without `control`).",
        default=None, parse=_text, shown='"tor" on PATH',
    )
    data_dir: str | None = setting(
        "Absolute path of the launched tor's DataDirectory (only without `control`). Set "
        "it to keep tor's state (guards, consensus) across restarts: bootstrap is faster "
        "and the service keeps its entry guards.",
        default=None, parse=_absolute_path, shown="a fresh temporary directory",
    )

    @property
    def launches(self) -> bool:
        return self.control is None


def tor_problems(settings: TorSettings) -> list[tuple[str, str, str]]:
    """Combinations the keys cannot express alone: ``(key, problem, fix)`` each."""
    problems: list[tuple[str, str, str]] = []
    if settings.control is not None:
        for key in ("tor_binary", "data_dir"):
            if getattr(settings, key) is not None:
                problems.append((key, "only used when gatekeep launches its own tor, but "
                                 "`control` names a running one", f"remove {key} or control"))
    else:
        for key in ("control_password", "control_cookie"):
            if getattr(settings, key) is not None:
                problems.append((key, "only used with `control` (a running tor); a launched "
                                 "tor is reached through a private socket",
                                 f"remove {key}, or add control"))
        binary = settings.tor_binary or "tor"
        if shutil.which(binary) is None:
            problems.append(("tor_binary", f"cannot find the tor program {binary!r}",
                             "install tor (apt-get install tor) or set tor_binary to its path"))
        if settings.data_dir is not None and os.path.normpath(settings.data_dir) == \
                os.path.normpath(settings.key_dir):
            problems.append(("data_dir", "is the same directory as key_dir",
                             "give tor's data and the onion key separate directories"))
    if settings.control_password is not None and settings.control_cookie is not None:
        problems.append(("control_cookie", "impossible combination: both a password and a "
                         "cookie for the control port", "keep the one your tor accepts"))
    return problems
