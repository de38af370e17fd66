"""
tor's onion-service configuration as control-port text, without any I/O.

A filesystem onion service (the only kind that can send a PROXY line per stream) is
set with ``SETCONF``, which replaces *every* such service of that tor at once. So
publishing ours means: read the current groups (``GETCONF HiddenServiceOptions``),
keep every other group verbatim, add or replace ours, write them all back.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import attrs

__all__ = [
    "HiddenService",
    "auth_file_name",
    "gatekeep_service",
    "parse_hidden_services",
    "quote",
    "setconf_command",
    "without",
]


@attrs.frozen
class HiddenService:
    """One ``HiddenServiceDir`` group: the directory and its options, in order."""

    directory: str
    options: tuple[tuple[str, str], ...] = ()

    def same_directory(self, other: str) -> bool:
        return os.path.normpath(self.directory) == os.path.normpath(other)


def parse_hidden_services(text: str) -> list[HiddenService]:
    """
    Groups from a ``GETCONF HiddenServiceOptions`` reply (``Key=value`` lines).

    tor answers a bare ``HiddenServiceOptions`` line when there are none; options
    before any ``HiddenServiceDir`` cannot exist, and are dropped.
    """
    groups: list[HiddenService] = []
    for line in text.splitlines():
        key, equals, value = line.strip().partition("=")
        if not equals:
            continue
        if key == "HiddenServiceDir":
            groups.append(HiddenService(value))
        elif groups:
            last = groups[-1]
            groups[-1] = attrs.evolve(last, options=(*last.options, (key, value)))
    return groups


def gatekeep_service(directory: str, ports: Sequence[int], target: str,
                     group_readable: bool = False) -> HiddenService:
    """
    Our group: every virtual port to one local target, with a PROXY v1 line per stream
    (``HiddenServiceExportCircuitID haproxy``) naming the rendezvous circuit.

    ``group_readable``: tor makes the directory and the ``hostname`` file readable by
    its group (the secret key stays private to tor), so a gatekeep in tor's group (as
    for the control cookie) can read the address of a service a system tor owns.
    """
    options = [("HiddenServicePort", f"{port} {target}") for port in ports]
    options += [("HiddenServiceVersion", "3"), ("HiddenServiceExportCircuitID", "haproxy")]
    if group_readable:
        options.append(("HiddenServiceDirGroupReadable", "1"))
    return HiddenService(directory, tuple(options))


def without(groups: Sequence[HiddenService], directory: str) -> list[HiddenService]:
    """The groups minus the one for ``directory`` (ours, maybe left by a crashed run)."""
    return [group for group in groups if not group.same_directory(directory)]


def quote(value: str) -> str:
    """A control-protocol QuotedString (control-spec 2.1: backslash escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def setconf_command(groups: Sequence[HiddenService]) -> str:
    """
    The command that makes ``groups`` tor's onion services, in this order.

    With no groups left it is ``RESETCONF HiddenServiceDir``: a SETCONF that names no
    HiddenService option would leave the old ones configured.
    """
    if not groups:
        return "RESETCONF HiddenServiceDir"
    parts = ["SETCONF"]
    for group in groups:
        parts.append(f"HiddenServiceDir={quote(group.directory)}")
        parts.extend(f"{key}={quote(value)}" for key, value in group.options)
    return " ".join(parts)


def auth_file_name(line: str) -> str:
    """
    The ``authorized_clients`` file gatekeep writes for one client-auth line.

    Named by a hash of the line, so a restart rewrites the same files and can tell
    its own (``gatekeep-*.auth``) from files someone else put there.
    """
    digest = hashlib.sha256(line.encode("ascii")).hexdigest()[:16]
    return f"gatekeep-{digest}.auth"
