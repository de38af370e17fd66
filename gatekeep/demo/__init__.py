"""The embedded demo: a config and in-process backends that report what was detected."""

from __future__ import annotations

import socket
from importlib.resources import files

__all__ = ["demo_config_text"]

_LISTENER = """[[listener]]
name = "{name}"
endpoint = '{endpoint}'
service = "demo"
detect_timeout = "2s"
"""


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def demo_config_text(port: int) -> str:
    """The demo config for ``port``, on loopback only (IPv6 too where the host has it)."""
    listeners = [_LISTENER.format(name="demo-ipv4", endpoint=f"tcp:{port}:interface=127.0.0.1")]
    if _ipv6_loopback_available():
        listeners.append(_LISTENER.format(
            name="demo-ipv6", endpoint=f"tcp6:{port}:interface=\\:\\:1"))
    template = files(__package__).joinpath("demo.toml").read_text(encoding="utf-8")
    return template.replace("{listeners}", "\n".join(listeners))
