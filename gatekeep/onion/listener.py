"""
The onion listener: a v3 onion service whose streams feed a listener's service.

tor delivers each stream to a private loopback port, prefixed by a PROXY v1 line
that names the rendezvous circuit; from there the connection goes through the same
sniffing chain as a TCP listener's. Starting never blocks the rest of gatekeep:
the loopback port is bound at once, tor is launched (or reached) in the background,
and a lost or failed tor is retried with a growing delay, each failure logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatekeep.config.model import ListenerConfig
from gatekeep.config.tor import TorSettings
from gatekeep.onion.control import (
    TorControl,
    TorError,
    UploadWatch,
    connect_control,
    read_hostname,
)
from gatekeep.onion.keydir import prepare_key_dir
from gatekeep.onion.launch import LaunchedTor, launch_tor
from gatekeep.service import ListenerService
from gatekeep.sniff import ListenerRuntime, SniffingFactory

__all__ = ["OnionListenerService"]

log = Logger()

#: Seconds between attempts after tor failed or went away (the last one repeats).
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: How long publication may take before gatekeep says why it is still waiting.
SLOW_PUBLISH = 60.0


#: Where tor delivers the streams: a private port on the loopback interface.
LOCAL_ENDPOINT = "tcp:0:interface=127.0.0.1"


class OnionListenerService(ListenerService):
    """Publishes one ``[listener.tor]`` and keeps it published while running."""

    def __init__(self, listener: ListenerConfig, factory: SniffingFactory, reactor: Any,
                 retry_delays: Sequence[float] = RETRY_DELAYS,
                 connect: Callable[..., Awaitable[TorControl]] = connect_control,
                 launch: Callable[..., Awaitable[LaunchedTor]] = launch_tor) -> None:
        super().__init__(listener, factory, reactor)
        self.connect = connect
        self.launch = launch
        self.retry_delays = tuple(retry_delays)
        self.onion_address: str | None = None
        self.published = False
        self._launched: LaunchedTor | None = None
        self._control: TorControl | None = None
        self._loop: defer.Deferred[None] | None = None
        self._announcing: defer.Deferred[None] | None = None

    @staticmethod
    def endpoint_of(listener: ListenerConfig) -> str:
        return LOCAL_ENDPOINT

    @property
    def tor(self) -> TorSettings:
        assert self.listener.tor is not None
        return self.listener.tor

    @property
    def target(self) -> str:
        """Where tor delivers streams: the private loopback port."""
        assert self.port is not None
        address: Any = self.port.getHost()
        return f"127.0.0.1:{address.port}"

    def announce(self, address: str) -> None:
        # The listener is announced once tor has published it, not when this binds.
        pass

    def address(self) -> str:
        return self.onion_address or "-"

    def startService(self) -> None:
        super().startService()  # binds the loopback port; everything with tor is async
        self._start_loop()

    def _start_loop(self) -> None:
        self._loop = defer.ensureDeferred(self._keep_published())
        self._loop.addErrback(self._crashed)

    def update(self, listener: ListenerConfig, runtime: ListenerRuntime) -> None:
        """New routes at once; new tor settings by publishing again with them."""
        changed = listener.tor != self.listener.tor
        super().update(listener, runtime)
        if changed and self.running:
            log.info("listener {listener}: tor settings changed; publishing again",
                     listener=listener.name)
            defer.ensureDeferred(self._restart()).addErrback(self._crashed)

    async def _restart(self) -> None:
        await self._halt(unpublish=False)
        if self.running:
            self._start_loop()

    def _crashed(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            log.failure("listener {listener}: onion service stopped", failure,
                        listener=self.listener.name)

    async def _keep_published(self) -> None:
        failures = 0
        while self.running:
            try:
                lost = await self._publish()
                failures = 0
                why = await lost
                if self._launched is not None:
                    why = await self._launched.exit_reason(why)
            except TorError as error:
                why = str(error)
            except defer.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug must not end the retries
                log.failure("listener {listener}: unexpected error", listener=self.listener.name)
                why = "unexpected error (see the traceback above)"
            if not self.running:
                return
            delay = self.retry_delays[min(failures, len(self.retry_delays) - 1)]
            failures += 1
            self.published = False
            log.error("listener {listener}: onion service down: {why}; trying again in "
                      "{delay:g}s", listener=self.listener.name, why=why, delay=delay)
            await self._release()
            await _sleep(self.reactor, delay)

    async def _publish(self) -> defer.Deferred[str]:
        """Get a tor, publish the service, log its address; return what fires when lost."""
        tor, name = self.tor, self.listener.name
        prepare_key_dir(tor.key_dir, tor.client_auth, create=tor.launches)
        if tor.launches:
            self._launched = await self.launch(self.reactor, name, tor.tor_binary, tor.data_dir)
            control = self._launched.control
        else:
            assert tor.control is not None
            control = await self.connect(self.reactor, tor.control, tor.control_password,
                                         tor.control_cookie)
        self._control = control
        lost = control.when_lost().addCallback(lambda _: "the connection to tor closed")
        # A running tor is often another user: let its group (gatekeep's, for the control
        # cookie) read the address. A tor we launch is us.
        watch = control.watch_uploads()
        try:
            await control.publish(tor.key_dir, tor.ports, self.target,
                                  group_readable=not tor.launches)
            self.onion_address = read_hostname(tor.key_dir)
        except BaseException:
            watch.stop()
            raise
        log.info("listener {listener}: onion address {address} (ports {ports} -> {target}), "
                 "tor {version}{auth}; publishing", listener=name, address=self.onion_address,
                 ports=",".join(map(str, tor.ports)), target=self.target,
                 version=control.version,
                 auth=f", {len(tor.client_auth)} authorized clients" if tor.client_auth else "")
        # A lost connection is reported by the loop, not here.
        self._announcing = defer.ensureDeferred(self._announce(control, watch, self.onion_address))
        self._announcing.addErrback(lambda _: None)
        return lost

    async def _announce(self, control: TorControl, watch: UploadWatch, address: str) -> None:
        slow = self.reactor.callLater(SLOW_PUBLISH, self._still_waiting, control)
        try:
            await watch.uploaded(address.removesuffix(".onion"))
        finally:
            watch.stop()
            if slow.active():
                slow.cancel()
        self.published = True
        log.info("listener {listener} listening on {address}:{ports} (service {service})",
                 listener=self.listener.name, address=address,
                 ports=",".join(map(str, self.tor.ports)), service=self.listener.service)

    def _still_waiting(self, control: TorControl) -> None:
        async def report() -> None:
            phase = await control.bootstrap_phase()
            log.warn("listener {listener}: onion service not published after {seconds:g}s; "
                     "tor: {phase}", listener=self.listener.name, seconds=SLOW_PUBLISH,
                     phase=phase)
        defer.ensureDeferred(report()).addErrback(lambda _: None)

    async def _release(self, unpublish: bool = False) -> None:
        announcing, self._announcing = self._announcing, None
        if announcing is not None:
            announcing.cancel()
        control, self._control = self._control, None
        launched, self._launched = self._launched, None
        if launched is not None:
            await launched.stop()
        elif control is not None:
            if unpublish:
                try:
                    await control.unpublish(self.tor.key_dir)
                except TorError as error:
                    log.warn("listener {listener}: {error}", listener=self.listener.name,
                             error=str(error))
            control.close()

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _halt(self, unpublish: bool) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
        await self._release(unpublish=unpublish)

    async def _stop(self) -> None:
        await self._halt(unpublish=True)
        port, self.port = self.port, None
        if port is not None:
            await defer.maybeDeferred(port.stopListening)


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
