"""
Which listeners cannot share an address: the loader's answer (``clashes``) against the
kernel's, by binding both for real on a port free at run time.
"""

from __future__ import annotations

import errno
import itertools
import socket

import pytest

from gatekeep.config.endpoints import bound_address, clashes
from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.registry import Registry, load_registry

# (endpoint string with PORT, family, address to bind)
ADDRESSES = [
    ("tcp:PORT", socket.AF_INET, ""),
    ("tcp:port=PORT:interface=127.0.0.1", socket.AF_INET, "127.0.0.1"),
    ("tcp:PORT:interface=127.0.0.2", socket.AF_INET, "127.0.0.2"),
    ("tcp6:PORT", socket.AF_INET6, "::"),
    ("tcp6:PORT:interface=\\:\\:1", socket.AF_INET6, "::1"),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET6) as probe:  # free on IPv4 and IPv6 alike
        probe.bind(("::", 0))
        return int(probe.getsockname()[1])


def listening(family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's ports do
    sock.bind((address, port))
    sock.listen()
    return sock


@pytest.mark.parametrize(("first", "second"), list(itertools.product(ADDRESSES, repeat=2)))
def test_clashes_as_the_kernel_says(first: tuple[str, int, str],
                                    second: tuple[str, int, str]) -> None:
    port = free_port()
    held = listening(first[1], first[2], port)
    try:
        try:
            listening(second[1], second[2], port).close()
            kernel = False
        except OSError as error:
            assert error.errno == errno.EADDRINUSE, error
            kernel = True
    finally:
        held.close()
    one, other = (bound_address(text.replace("PORT", str(port)))
                  for text in (first[0], second[0]))
    assert one is not None and other is not None
    assert clashes(one, other) is kernel, (first[0], second[0])


def test_port_zero_and_unix_paths() -> None:
    assert bound_address("tcp:0") is None  # the kernel picks a new port each time
    assert bound_address("tcp:port=0:interface=127.0.0.1") is None
    one, other = bound_address("unix:/run/gk/a.sock"), bound_address("unix:/run/gk/./a.sock")
    assert one is not None and other is not None and clashes(one, other)


LISTENERS = """\
[[listener]]
name = "one"
endpoint = "{one}"
service = "edge"

[[listener]]
name = "two"
endpoint = "{two}"
service = "edge"

[service.edge]
default = "web"

[[service.edge.route]]
name = "web"
forward = {{ to = "tcp:127.0.0.1:8080" }}
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def errors(registry: Registry, one: str, two: str) -> list[str]:
    try:
        load_config(LISTENERS.format(one=one, two=two), registry)
    except ConfigErrors as problems:
        return [str(problem) for problem in problems.errors]
    return []


def test_the_loader_reports_what_cannot_both_listen(registry: Registry) -> None:
    assert errors(registry, "tcp:0", "tcp:0") == []  # two ports the system picks
    assert errors(registry, "tcp:443:interface=127.0.0.1", "tcp:443:interface=127.0.0.2") == []
    for two in ("tcp:port=443", "tcp:443:interface=127.0.0.1", "tcp6:443"):
        (problem,) = errors(registry, "tcp:443", two)
        assert problem.startswith(
            "listener[1].endpoint: endpoint also used by listener 'one'"), problem
        assert "port 0" in problem  # the fix


def test_the_admin_listener_may_not_take_a_listeners_address(registry: Registry) -> None:
    def admin_errors(one: str, two: str, admin: str) -> list[str]:
        text = f'[admin]\nendpoint = "{admin}"\n\n' + LISTENERS.format(one=one, two=two)
        try:
            load_config(text, registry)
        except ConfigErrors as problems:
            return [str(problem) for problem in problems.errors]
        return []

    assert admin_errors("tcp:0", "tcp:8443", "tcp:9100:interface=127.0.0.1") == []
    (problem,) = admin_errors("tcp:0", "tcp:9100", "tcp:9100:interface=127.0.0.1")
    assert problem.startswith("admin.endpoint: endpoint also used by a [[listener]]"), problem
