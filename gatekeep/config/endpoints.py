"""
Endpoint-string validation at load time.

Parsing an endpoint string with Twisted's own parsers (against a reactor that is
never run) is the only way to be sure ``gatekeep check`` accepts exactly what
``twistd`` will, third-party endpoint plugins included.
"""

from __future__ import annotations

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.testing import MemoryReactorClock

__all__ = ["client_endpoint_problem", "server_endpoint_problem"]


def _problem(kind: str, description: str, error: Exception) -> str:
    detail = str(error) or type(error).__name__
    return f"bad {kind} endpoint string {description!r}: {detail}"


def server_endpoint_problem(description: str) -> str | None:
    """None if ``description`` is a usable server endpoint string, else why not."""
    if description.startswith("systemd:"):
        # The descriptor only exists when systemd started us; check the syntax alone.
        problem = _systemd_problem(description)
        return _problem("server", description, ValueError(problem)) if problem else None
    try:
        serverFromString(MemoryReactorClock(), description)
    except Exception as error:  # noqa: BLE001 - parsers raise anything
        return _problem("server", description, error)
    return None


def _systemd_problem(description: str) -> str | None:
    """``systemd:domain=INET:index=0`` or ``systemd:domain=INET6:name=https``."""
    params: dict[str, str] = {}
    for part in description.split(":")[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in ("domain", "index", "name") or key in params:
            return f"unexpected {part!r}: use domain= and one of index= or name="
        params[key] = value
    if params.get("domain") not in ("INET", "INET6", "UNIX"):
        return "domain= must be INET, INET6 or UNIX"
    if ("index" in params) == ("name" in params):
        return "give exactly one of index= (0 = the first socket) or name= (FileDescriptorName=)"
    if "index" in params and not params["index"].isdigit():
        return "index= must be a number (0 = the first socket systemd passes)"
    return None


def client_endpoint_problem(description: str) -> str | None:
    """None if ``description`` is a usable client endpoint string, else why not."""
    try:
        clientFromString(MemoryReactorClock(), description)
    except Exception as error:  # noqa: BLE001 - parsers raise anything
        return _problem("client", description, error)
    return None
