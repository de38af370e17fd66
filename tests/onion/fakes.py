"""
A stand-in for txtorcon's control protocol: enough of tor to test gatekeep's side.

It keeps tor's onion-service configuration as tor would report it back, records
every command, and lets a test fire events (``HS_DESC``, ``WARN``) or fail a command.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import txtorcon
from twisted.internet import defer
from twisted.python.failure import Failure
from txtorcon.torcontrolprotocol import TorDisconnectError

_OPTION = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


class FakeTransport:
    def __init__(self, protocol: FakeControlProtocol) -> None:
        self.protocol = protocol

    def loseConnection(self) -> None:
        self.protocol.lose()


class FakeControlProtocol:
    version = "0.4.9-fake"

    def __init__(self, hidden_services: str = "HiddenServiceOptions") -> None:
        self.hidden_services = hidden_services
        self.commands: list[str] = []
        self.listeners: dict[str, list[Callable[[str], None]]] = {}
        self.refuse: dict[str, tuple[str, list[str]]] = {}  # command word -> (error, warnings)
        self.transport: FakeTransport | None = FakeTransport(self)
        self.hold_getconf: list[defer.Deferred[Any]] | None = None
        self._lost: list[defer.Deferred[Any]] = []
        self.bootstrap = 'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"'

    # -- what TorControl calls
    def queue_command(self, line: str) -> defer.Deferred[str]:
        self.commands.append(line)
        word = line.split(" ", 1)[0]
        if word in self.refuse:
            error, warnings = self.refuse.pop(word)
            for warning in warnings:
                self.emit("WARN", warning)
            return defer.fail(txtorcon.TorProtocolError(513, error))
        if word == "SETCONF":
            self.hidden_services = "\n".join(
                f"{key}={_unescape(value)}" for key, value in _OPTION.findall(line))
        elif line == "RESETCONF HiddenServiceDir":
            self.hidden_services = "HiddenServiceOptions"
        return defer.succeed("OK")

    def get_conf_raw(self, key: str) -> defer.Deferred[str]:
        assert key == "HiddenServiceOptions"
        self.commands.append(f"GETCONF {key}")
        if self.hold_getconf is not None:
            held: defer.Deferred[Any] = defer.Deferred()
            held.addCallback(lambda _: self.hidden_services)
            self.hold_getconf.append(held)
            return held
        return defer.succeed(self.hidden_services)

    def get_info(self, key: str) -> defer.Deferred[dict[str, str]]:
        assert key == "status/bootstrap-phase"
        return defer.succeed({key: self.bootstrap})

    def add_event_listener(self, name: str, callback: Callable[[str], None]) -> Any:
        self.listeners.setdefault(name, []).append(callback)
        return defer.succeed(None)

    def remove_event_listener(self, name: str, callback: Callable[[str], None]) -> Any:
        self.listeners[name].remove(callback)
        return defer.succeed(None)

    def when_disconnected(self) -> defer.Deferred[Any]:
        lost: defer.Deferred[Any] = defer.Deferred()
        if self.transport is None:
            lost.errback(Failure(TorDisconnectError("gone", None)))
        else:
            self._lost.append(lost)
        return lost

    # -- what tests do
    def emit(self, name: str, text: str) -> None:
        for callback in list(self.listeners.get(name, [])):
            callback(text)

    def lose(self) -> None:
        if self.transport is None:
            return
        self.transport = None
        waiting, self._lost = self._lost, []
        for lost in waiting:
            lost.errback(Failure(TorDisconnectError("Tor connection terminated", None)))
