"""
The extension points third parties implement.

Plain data (routes, matches, listeners) are frozen attrs classes in
:mod:`gatekeep.values`; only behaviour that plugins provide is an interface here.
Plugins are found through entry points (``gatekeep.detectors``, ``gatekeep.targets``,
``gatekeep.rules``, ``gatekeep.shapers``) and verified with ``zope.interface.verify``
when loaded, so a broken plugin fails loudly instead of being silently skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress
    from twisted.internet.protocol import Protocol

    from gatekeep.values import Decision, Inbound, Match, NeedMore, NoMatch

__all__ = ["IAccessRule", "IDetector", "IInboundReceiver", "IShaper", "ITarget"]


class IDetector(Interface):
    """
    Recognises one protocol from the first bytes a client sends.

    ``detect`` must be a pure function of ``prefix``: no I/O, no clock, no state kept
    between calls. It always sees every byte received so far (never just the newest
    chunk), so its verdict cannot depend on how the bytes were split into reads.
    Any verdict other than :class:`~gatekeep.values.NeedMore` is final: the chain
    stops asking once a detector has matched or refused.

    A detector may also have a ``facts`` attribute, a tuple naming every fact it
    reports: configs then get an error for a misspelt key in ``match.<name>``
    instead of a route that silently never matches.
    """

    name = Attribute("The key used in config (``match.<name>``); equals the entry-point name.")
    max_prefix = Attribute(
        "The most bytes this detector needs to decide. Past it, a detector still "
        "answering NeedMore is treated as NoMatch (the chain also caps all detectors "
        "at 16 KiB)."
    )

    def detect(prefix: bytes) -> Match | NoMatch | NeedMore:
        """
        Decide whether ``prefix`` starts the protocol.

        Must not raise for any input: hostile bytes answer NoMatch.
        """


class ITarget(Interface):
    """
    What a route does with a connection once it has been detected.

    Targets are built from the route's config table at load time (the entry point is
    called with the table's keys as keyword arguments) and shared by all connections
    of the route, so ``attach`` must not keep per-connection state on ``self``.
    """

    def attach(inbound: Inbound) -> Protocol:
        """
        Return the protocol that takes over the sniffed connection.

        gatekeep then calls its ``makeConnection`` with the client's transport and
        its ``dataReceived`` with the bytes already read (``inbound.prefix``), if any.
        If it provides ``IHalfCloseableProtocol`` it is told about half-close;
        otherwise a client's half-close closes the connection.
        """

    def describe() -> str:
        """A one-line summary for route tables and ``gatekeep explain``."""


class IInboundReceiver(Interface):
    """
    Optionally provided by protocols built by the in-process ``app`` target.

    Lets a Twisted application reached with no second hop learn what gatekeep
    detected (facts, the real client address, the route) before ``makeConnection``.
    """

    def inboundReceived(inbound: Inbound) -> None:
        """Called once, before ``makeConnection``."""


class IAccessRule(Interface):
    """
    Allows or denies a connection from who it comes from and what was detected.

    A rule is built once per ``[access.NAME]`` table (the entry point of its ``kind``
    is called with the table's other keys) and shared by every connection, so
    ``decide`` must not keep per-connection state on ``self``. It must be quick and
    must not block: it runs on the reactor thread for every connection.
    """

    def decide(peer: IAddress, match: Match | None) -> Decision:
        """
        Return ALLOW, DENY or ABSTAIN (no opinion: the connection goes on).

        ``peer`` is the real client (after a trusted PROXY header). A listener's
        rule is asked twice: on accept (after the PROXY preamble) with ``match``
        None, and again once a route is chosen, with the detected facts plus a
        ``protocol`` fact (the detector's name; absent for a default route taken
        without a match). A route's rule is asked once, with the facts.
        """

    def describe() -> str:
        """A one-line summary for ``gatekeep check`` and ``gatekeep explain``."""


class IShaper(Interface):
    """
    A rate limit on bytes, consulted by the relay after it passed data on.

    The relay pauses the producing transport for the returned delay instead of
    buffering, so a shaped connection never costs more memory than an unshaped one.
    One shaper is built per direction and per scope (a connection, a client IP, a
    listener, as ``[shaper.NAME] scope`` says): the entry point of its ``kind`` is
    called with the table's other keys each time.
    """

    def admit(nbytes: int, now: float) -> float:
        """
        Account for ``nbytes`` passing at time ``now``.

        Return how many seconds the producer should stay paused (0.0: no pause).
        """
