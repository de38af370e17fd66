"""
A tor control connection (txtorcon's protocol) and what gatekeep asks of it.

Publishing goes through :mod:`gatekeep.onion.hsconf`: read every onion service the
tor has, replace ours, write them all back. Changes to one tor are serialised, so
two onion listeners sharing a tor cannot overwrite each other's service.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import txtorcon
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from gatekeep.onion.hsconf import (
    gatekeep_service,
    parse_hidden_services,
    setconf_command,
    without,
)

__all__ = ["TorControl", "TorError", "UploadWatch", "connect_control", "read_hostname"]

#: One lock per tor (by control endpoint): HiddenService changes are read-modify-write.
_locks: dict[str, defer.DeferredLock] = {}


class TorError(Exception):
    """Something tor refused or could not do; the message is meant for the user."""


class _Authenticating(txtorcon.TorControlProtocol):  # type: ignore[misc]
    """
    Authenticates the way the config says, where txtorcon would pick for itself.

    A configured cookie path is read instead of the path tor announces (which may not
    be the path gatekeep sees, e.g. in a container); a configured password is used
    even when tor also offers its cookie. txtorcon has no public hook for either:
    overriding its cookie reader is the smallest change, and
    tests/integration/test_onion_control.py fails if it stops being called.
    """

    cookie_path: str | None = None
    use_password = False

    def _read_cookie(self, cookiefile: str) -> None:
        if self.use_password:
            # txtorcon then falls back to the password, if tor accepts one.
            raise OSError("not used: control_password is set")
        super()._read_cookie(self.cookie_path or cookiefile)


class _Factory(txtorcon.TorProtocolFactory):  # type: ignore[misc]
    def __init__(self, password: str | None, cookie: str | None) -> None:
        super().__init__(password_function=(lambda: password) if password else None)
        self.password = password
        self.cookie = cookie

    def buildProtocol(self, addr: Any) -> Any:
        proto = _Authenticating(self.password_function)
        proto.cookie_path = self.cookie
        proto.use_password = self.password is not None
        proto.factory = self
        return proto


async def connect_control(
    reactor: Any, description: str, password: str | None = None, cookie: str | None = None,
    endpoint: IStreamClientEndpoint | None = None,
) -> TorControl:
    """Connect and authenticate to tor's control port, or raise :class:`TorError`."""
    if endpoint is None:
        endpoint = clientFromString(reactor, description)
    where = f"tor's control port {description}"
    proto: Any
    try:
        proto = await endpoint.connect(_Factory(password, cookie))
    except defer.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - ConnectError, DNSLookupError, endpoint bugs
        raise TorError(f"cannot connect to {where}: {error}") from None
    try:
        await proto.post_bootstrap
    except Exception as error:  # noqa: BLE001 - txtorcon raises plain RuntimeErrors
        proto.transport.loseConnection()
        raise TorError(f"{where} refused authentication: {_message(error)}") from None
    return TorControl(proto, reactor, description)


def _message(error: BaseException | Failure) -> str:
    value = error.value if isinstance(error, Failure) else error
    return " ".join(str(value).split()) or type(value).__name__


class TorControl:
    """An authenticated control connection to one tor."""

    def __init__(self, protocol: Any, reactor: Any, description: str) -> None:
        self.protocol = protocol
        self.reactor = reactor
        self.description = description
        self.version: str = getattr(protocol, "version", "?")
        self._lock = _locks.setdefault(description, defer.DeferredLock())

    def when_lost(self) -> defer.Deferred[Any]:
        """Fires when the control connection closes (cancelling it still cancels)."""
        lost: defer.Deferred[Any] = self.protocol.when_disconnected()

        def closed(failure: Failure) -> Failure | None:
            return failure if failure.check(defer.CancelledError) else None

        return lost.addErrback(closed)

    async def command(self, line: str) -> str:
        try:
            reply: str = await self.protocol.queue_command(line)
        except txtorcon.TorProtocolError as error:
            raise TorError(f"tor refused {line.split(' ', 1)[0]}: {_message(error)}") from None
        return reply

    async def take_ownership(self) -> None:
        """Make tor exit when this connection closes (a tor gatekeep launched)."""
        await self.command("TAKEOWNERSHIP")
        await self.command("RESETCONF __OwningControllerProcess")

    async def publish(self, key_dir: str, ports: Sequence[int], target: str,
                      group_readable: bool = False) -> None:
        """
        Add (or replace) the onion service in ``key_dir``, keeping every other one.

        tor's own warnings while it applies the change go into the error: its reply
        alone only says "Failed to configure rendezvous options".
        """
        ours = gatekeep_service(key_dir, ports, target, group_readable)
        await self._change(lambda groups: [*without(groups, key_dir), ours])

    async def unpublish(self, key_dir: str) -> None:
        await self._change(lambda groups: without(groups, key_dir))

    async def _change(self, edit: Callable[[list[Any]], list[Any]]) -> None:
        await self._lock.acquire()
        warnings: list[str] = []
        listening = False
        try:
            raw = await self.protocol.get_conf_raw("HiddenServiceOptions")
            command = setconf_command(edit(parse_hidden_services(raw)))
            await self.protocol.add_event_listener("WARN", warnings.append)
            listening = True
            try:
                await self.command(command)
            except TorError as error:
                detail = "; ".join(w.strip() for w in warnings)
                raise TorError(f"{error}" + (f" (tor says: {detail})" if detail else "")) \
                    from None
        finally:
            if listening:
                await self.protocol.remove_event_listener("WARN", warnings.append)
            self._lock.release()

    def watch_uploads(self) -> UploadWatch:
        """Start noting descriptor uploads (before publishing, so none is missed)."""
        return UploadWatch(self.protocol)

    async def bootstrap_phase(self) -> str:
        """tor's bootstrap summary, e.g. ``... PROGRESS=45 ... SUMMARY="Loading relays"``."""
        reply = await self.protocol.get_info("status/bootstrap-phase")
        return str(reply.get("status/bootstrap-phase", "unknown"))

    def close(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.loseConnection()


class UploadWatch:
    """
    Notes every onion address tor uploads a descriptor for (``HS_DESC UPLOADED``), so
    that :meth:`uploaded` can say when a service became reachable, even if that
    happened before its address was known.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.seen: set[str] = set()
        self._waiting: dict[str, list[defer.Deferred[None]]] = {}
        self._listening = True
        self.failed: Failure | None = None
        protocol.add_event_listener("HS_DESC", self._event).addErrback(self._failed)

    def _event(self, text: str) -> None:
        words = text.split()
        if len(words) >= 2 and words[0] == "UPLOADED":
            self.seen.add(words[1])
            for waiting in self._waiting.pop(words[1], []):
                waiting.callback(None)

    def _failed(self, failure: Failure) -> None:
        self.failed = failure
        for waiters in self._waiting.values():
            for waiting in waiters:
                waiting.errback(failure)
        self._waiting.clear()

    def uploaded(self, address: str) -> defer.Deferred[None]:
        """
        Fires at the first upload for ``address`` (without ``.onion``): the service can
        be reached from then on (a first fetch may still need a retry).
        """
        if address in self.seen:
            return defer.succeed(None)
        if self.failed is not None:
            return defer.fail(self.failed)
        waiters = self._waiting.setdefault(address, [])
        waiting: defer.Deferred[None] = defer.Deferred(lambda d: waiters.remove(d))
        waiters.append(waiting)
        return waiting

    def stop(self) -> None:
        if self._listening:
            self._listening = False
            _quietly(self.protocol.remove_event_listener("HS_DESC", self._event))


def _quietly(result: Any) -> None:
    """Ignore the outcome of a command sent while the connection may be closing."""
    if isinstance(result, defer.Deferred):
        result.addErrback(lambda _: None)


def read_hostname(key_dir: str) -> str:
    """The service's address, which tor writes to ``hostname`` as soon as it has a key."""
    path = os.path.join(key_dir, "hostname")
    try:
        with open(path, encoding="ascii") as file:
            address = file.read().strip()
    except OSError as error:
        raise TorError(f"cannot read the onion address from {path}: {error.strerror} "
                       "(gatekeep must be able to read tor's key_dir)") from None
    if not address.endswith(".onion") or len(address) != 62:
        raise TorError(f"{path} does not hold a v3 onion address: {address[:80]!r}")
    return address
