"""gatekeep's side of the control protocol, against a fake tor (tests/onion/fakes.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.onion.control import TorControl, TorError
from tests.onion.fakes import FakeControlProtocol

BLOG = ("HiddenServiceDir=/var/lib/tor/blog\nHiddenServicePort=80 127.0.0.1:8080\n"
        "HiddenServiceExportCircuitID=haproxy")
ADDRESS = "a" * 56


class TorControlTests(SynchronousTestCase):
    def control(self, proto: FakeControlProtocol, name: str = "tcp:127.0.0.1:9051") -> TorControl:
        return TorControl(proto, MemoryReactorClock(), name)

    def done(self, coroutine: Any) -> Any:
        return self.successResultOf(defer.ensureDeferred(coroutine))

    def test_publish_keeps_other_services_verbatim(self) -> None:
        proto = FakeControlProtocol(BLOG)
        control = self.control(proto)
        self.done(control.publish("/srv/onion", [80, 5222], "127.0.0.1:4000"))
        self.assertEqual(proto.hidden_services.splitlines(), [
            *BLOG.splitlines(),
            "HiddenServiceDir=/srv/onion",
            "HiddenServicePort=80 127.0.0.1:4000",
            "HiddenServicePort=5222 127.0.0.1:4000",
            "HiddenServiceVersion=3",
            "HiddenServiceExportCircuitID=haproxy",
        ])
        # Publishing again (a new local port after a restart) replaces, never duplicates.
        self.done(control.publish("/srv/onion", [80], "127.0.0.1:4001"))
        self.assertEqual(proto.hidden_services.count("HiddenServiceDir=/srv/onion"), 1)
        self.assertIn("HiddenServicePort=80 127.0.0.1:4001", proto.hidden_services)
        self.assertNotIn("127.0.0.1:4000", proto.hidden_services)
        self.done(control.unpublish("/srv/onion"))
        self.assertEqual(proto.hidden_services, BLOG)
        self.assertEqual(proto.listeners.get("WARN"), [])

    def test_unpublishing_the_last_service_resets_the_group(self) -> None:
        proto = FakeControlProtocol()
        control = self.control(proto)
        self.done(control.publish("/srv/onion", [80], "127.0.0.1:4000"))
        self.done(control.unpublish("/srv/onion"))
        self.assertEqual(proto.commands[-1], "RESETCONF HiddenServiceDir")
        self.assertEqual(proto.hidden_services, "HiddenServiceOptions")

    def test_refusal_carries_tors_warnings(self) -> None:
        proto = FakeControlProtocol()
        proto.refuse["SETCONF"] = (
            "Unacceptable option value: Failed to configure rendezvous options. See logs "
            "for details.",
            ["Permissions on directory /srv/onion are too permissive.\r\n"])
        failure = self.failureResultOf(
            defer.ensureDeferred(self.control(proto).publish("/srv/onion", [80], "x:1")),
            TorError)
        self.assertEqual(str(failure.value), (
            "tor refused SETCONF: 513 Unacceptable option value: Failed to configure "
            "rendezvous options. See logs for details. (tor says: Permissions on directory "
            "/srv/onion are too permissive.)"))
        self.assertEqual(proto.listeners["WARN"], [])

    def test_changes_to_one_tor_are_serialised(self) -> None:
        proto = FakeControlProtocol()
        proto.hold_getconf = []
        first, second = self.control(proto), self.control(proto)
        one = defer.ensureDeferred(first.publish("/srv/one", [80], "127.0.0.1:1"))
        two = defer.ensureDeferred(second.publish("/srv/two", [80], "127.0.0.1:2"))
        self.assertEqual(len(proto.hold_getconf), 1)  # the second waits for the first
        proto.hold_getconf.pop().callback(None)
        self.successResultOf(one)
        proto.hold_getconf.pop().callback(None)
        self.successResultOf(two)
        self.assertIn("HiddenServiceDir=/srv/one", proto.hidden_services)
        self.assertIn("HiddenServiceDir=/srv/two", proto.hidden_services)

    def test_upload_watch_waits_for_our_uploaded_descriptor(self) -> None:
        proto = FakeControlProtocol()
        watch = self.control(proto).watch_uploads()
        uploaded = watch.uploaded(ADDRESS)
        proto.emit("HS_DESC", f"UPLOAD {ADDRESS} UNKNOWN $AAAA~relay0 descid")
        proto.emit("HS_DESC", f"UPLOADED {'b' * 56} UNKNOWN $AAAA~relay0")
        self.assertNoResult(uploaded)
        proto.emit("HS_DESC", f"UPLOADED {ADDRESS} UNKNOWN $AAAA~relay0")
        self.assertIsNone(self.successResultOf(uploaded))
        watch.stop()
        self.assertEqual(proto.listeners["HS_DESC"], [])

    def test_an_upload_before_the_address_was_known_counts(self) -> None:
        proto = FakeControlProtocol()
        watch = self.control(proto).watch_uploads()
        proto.emit("HS_DESC", f"UPLOADED {ADDRESS} UNKNOWN $AAAA~relay0")
        self.assertIsNone(self.successResultOf(watch.uploaded(ADDRESS)))

    def test_cancelling_a_wait(self) -> None:
        proto = FakeControlProtocol()
        watch = self.control(proto).watch_uploads()
        uploaded = watch.uploaded(ADDRESS)
        uploaded.cancel()
        self.failureResultOf(uploaded, defer.CancelledError)
        proto.emit("HS_DESC", f"UPLOADED {ADDRESS} UNKNOWN $AAAA~relay0")  # nobody to tell

    def test_when_lost_fires_without_an_error(self) -> None:
        proto = FakeControlProtocol()
        lost = self.control(proto).when_lost()
        self.assertNoResult(lost)
        proto.lose()
        self.successResultOf(lost)

    def test_cancelling_the_wait_for_loss_is_a_cancellation(self) -> None:
        lost = self.control(FakeControlProtocol()).when_lost()
        lost.cancel()
        self.failureResultOf(lost, defer.CancelledError)
