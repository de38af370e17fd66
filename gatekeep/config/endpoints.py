"""
Endpoint-string validation at load time.

Parsing an endpoint string with Twisted's own parsers (against a reactor that is
never run) is the only way to be sure ``gatekeep check`` accepts exactly what
``twistd`` will, third-party endpoint plugins included.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

__all__ = [
    "bound_address",
    "clashes",
    "client_endpoint_problem",
    "server_endpoint_problem",
    "split_endpoint",
    "tor_endpoint_problem",
]


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


#: What a server endpoint binds: ("tcp", port, interface) or ("unix", path), or the
#: description itself for endpoints gatekeep cannot look into (systemd:, plugins).
Bound = tuple[Any, ...]

_LOOKED_INTO = ("tcp", "tcp6", "ssl", "unix")


def bound_address(description: str) -> Bound | None:
    """
    What listening on ``description`` would bind, found by listening with Twisted's
    parser on a reactor that is never run; None when it binds nothing fixed (port 0:
    the kernel picks a free port each time).
    """
    args, _ = split_endpoint(description)
    if not args or args[0].strip().lower() not in _LOOKED_INTO:
        return (description,)  # (a plugin's listen might start things: not tried)
    reactor = MemoryReactorClock()
    try:
        serverFromString(reactor, description).listen(Factory())
    except Exception:  # noqa: BLE001 - parsers raise anything; reported elsewhere
        return (description,)
    for port, *_, interface in (*reactor.tcpServers, *reactor.sslServers):
        if port == 0:
            return None
        return ("tcp", port, interface)
    for address, *_ in reactor.unixServers:
        return ("unix", os.path.normpath(os.fsdecode(address)))
    return (description,)


def clashes(one: Bound, other: Bound) -> bool:
    """
    Whether two bound addresses cannot both be bound, as Linux sees it: on one port,
    IPv4's wildcard takes every IPv4 address, and IPv6's (``::``, dual-stack unless
    the system says otherwise) every address.
    """
    if one[0] == "tcp" and other[0] == "tcp":
        if one[1] != other[1]:
            return False
        a, b = _interface(one[2]), _interface(other[2])
        return a == b or "::" in (a, b) or ("0.0.0.0" in (a, b) and ":" not in a + b)
    return one == other


def _interface(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text or "0.0.0.0"))
    except ValueError:
        return text


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
    if description.split(":", 1)[0].strip().lower() == "tor":
        return tor_endpoint_problem(description)
    return None


def split_endpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """
    An endpoint string's positional and keyword arguments, split as Twisted does: on
    colons, at the first ``=`` of a part, where neither is escaped with a backslash.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    part: list[str] = []
    key: str | None = None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            part.append(next(chars, ""))
        elif char == ":":
            _keep(args, kwargs, key, "".join(part))
            part, key = [], None
        elif char == "=" and key is None:
            key, part = "".join(part), []
        else:
            part.append(char)
    _keep(args, kwargs, key, "".join(part))
    return args, kwargs


def _keep(args: list[str], kwargs: dict[str, str], key: str | None, text: str) -> None:
    if key is None:
        args.append(text)
    else:
        kwargs[key] = text


def tor_endpoint_problem(description: str) -> str | None:
    """
    What txtorcon's ``tor:`` parser accepts but its connect would then fail on.

    Found by reading txtorcon 26.6: with ``socksPort`` and no ``socksHostname`` it
    connects to host None; SOCKS credentials raise at connect; its SOCKS connection
    is IPv4 only.
    """
    _, kwargs = split_endpoint(description)
    where = f"bad client endpoint string {description!r}: "
    if "socksUsername" in kwargs or "socksPassword" in kwargs:
        return where + ("txtorcon cannot send SOCKS credentials yet (every connect would "
                        "fail); remove socksUsername/socksPassword")
    socks_host = kwargs.get("socksHostname")
    if "socksPort" in kwargs and socks_host is None:
        return where + ("socksPort needs socksHostname too (txtorcon would connect to no "
                        "host); add :socksHostname=127.0.0.1")
    if socks_host is not None:
        if "socksPort" not in kwargs:
            return where + ("socksHostname needs socksPort too (without it txtorcon "
                            "ignores the host and tries 127.0.0.1:9050 and :9150)")
        try:
            is_v6 = ipaddress.ip_address(socks_host).version == 6
        except ValueError:
            is_v6 = False
        if is_v6 or not socks_host:
            return where + ("socksHostname must be an IPv4 address or a host name: "
                            "txtorcon reaches tor's SOCKS port over IPv4 only")
    return None
