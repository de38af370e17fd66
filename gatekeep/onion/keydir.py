"""
The onion service's directory (``key_dir``): created private, client auth written.

tor reads ``authorized_clients/*.auth`` when the service is configured; any file
there makes the service private. gatekeep writes one ``gatekeep-*.auth`` file per
``client_auth`` line, removes its own files that are no longer listed, and refuses
to start with a file it did not write: a stray key would grant or deny access
behind the config's back.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from gatekeep.onion.control import TorError
from gatekeep.onion.hsconf import auth_file_name

__all__ = ["prepare_key_dir"]


def prepare_key_dir(key_dir: str, client_auth: Sequence[str], create: bool) -> None:
    """
    Make ``key_dir`` ready for tor. ``create``: make it if missing (a tor we launch
    runs as us; a running tor's own user may have to own it, so it creates it).
    """
    if create or client_auth:
        try:
            os.makedirs(key_dir, mode=0o700, exist_ok=True)
        except OSError as error:
            raise TorError(f"cannot create key_dir {key_dir}: {error.strerror}") from None
    clients = os.path.join(key_dir, "authorized_clients")
    wanted = {auth_file_name(line): line for line in client_auth}
    try:
        present = set(os.listdir(clients))
    except FileNotFoundError:
        present = set()
    except PermissionError:
        if client_auth:
            raise TorError(f"cannot read {clients}: permission denied (gatekeep writes "
                           "client_auth there)") from None
        return  # gatekeep never wrote there, so none of its files can be left over
    foreign = sorted(n for n in present if n.endswith(".auth") and n not in wanted
                     and not n.startswith("gatekeep-"))
    if foreign:
        raise TorError(
            f"{clients} holds {', '.join(foreign)}, which client_auth does not list: tor "
            "would honour it; list its key in client_auth or remove the file")
    try:
        for name in present - set(wanted):
            if name.startswith("gatekeep-") and name.endswith(".auth"):
                os.unlink(os.path.join(clients, name))
        if wanted:
            os.makedirs(clients, mode=0o700, exist_ok=True)
        for name, line in wanted.items():
            path = os.path.join(clients, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(line + "\n")
    except OSError as error:
        where = error.filename or clients
        why = error.strerror or errno.errorcode.get(error.errno or 0, "error")
        raise TorError(f"cannot write client_auth to {where}: {why}") from None
