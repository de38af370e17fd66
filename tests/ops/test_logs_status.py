"""JSON log lines, the tracker's drain, and the status page's content."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.connlog import log_connection
from gatekeep.logformat import event_as_json
from gatekeep.status import (
    ListenerStatus,
    RecentErrors,
    RouteStatus,
    ServiceStatus,
    Snapshot,
    render_status,
)
from gatekeep.tracker import ABORT_GRACE, ConnectionTracker
from gatekeep.values import ConnectionRecord
from tests.helpers import captured_log


class JSONLogTests(SynchronousTestCase):
    def test_connection_line_has_every_field_by_name(self) -> None:
        record = ConnectionRecord("public", "[2001:db8::7]:4711", 100.0, protocol="tls",
                                  facts={"sni": "example.org", "alpn": ("h2", "http/1.1")},
                                  route="web", backend="tcp:127.0.0.1:8443", bytes_in=517,
                                  bytes_out=4096)
        record.close("done")
        with captured_log("gatekeep.connection") as events:
            log_connection(record, 101.5)
        line = event_as_json(events[0])
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        data = json.loads(line)
        self.assertEqual(data["client"], "[2001:db8::7]:4711")
        self.assertEqual((data["listener"], data["route"], data["protocol"]),
                         ("public", "web", "tls"))
        self.assertEqual((data["bytes_in"], data["bytes_out"]), (517, 4096))
        self.assertEqual(data["facts"], {"sni": "example.org", "alpn": ["h2", "http/1.1"]})
        self.assertEqual((data["duration"], data["close_reason"], data["outcome"]),
                         (1.5, "done", "ok"))
        self.assertEqual((data["level"], data["namespace"]), ("info", "gatekeep.connection"))
        self.assertIn("route=web", data["message"])
        self.assertNotIn("facts_text", data)

    def test_other_events_keep_plain_fields_and_tracebacks(self) -> None:
        log = Logger(namespace="t")
        with captured_log("t") as events:
            log.warn("odd {thing} {obj}", thing="x\ny", obj=object())
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                log.failure("it broke", Failure())
        self.flushLoggedErrors(ZeroDivisionError)
        warn, failure = (json.loads(event_as_json(e)) for e in events)
        self.assertEqual(warn["level"], "warn")
        self.assertEqual(warn["thing"], "x\ny")
        self.assertNotIn("obj", warn)  # not JSON data: only in the message
        self.assertTrue(warn["message"].startswith("odd x\ny <object"))
        self.assertEqual(failure["level"], "critical")
        self.assertIn("ZeroDivisionError", failure["traceback"])
        self.assertTrue(failure["time"].endswith("Z"))


class _Conn:
    def __init__(self) -> None:
        self.aborted = False
        self.transport = self
        self.record = ConnectionRecord("x", "192.0.2.1:4000", 0.0)

    def abortConnection(self) -> None:
        self.aborted = True


class TrackerTests(SynchronousTestCase):
    def test_drain_fires_when_the_last_connection_ends(self) -> None:
        clock, tracker = Clock(), ConnectionTracker()
        a, b = _Conn(), _Conn()
        tracker.opened("x", a)
        tracker.opened("y", b)
        results: list[int] = []
        tracker.drain(30.0, clock).addCallback(results.append)
        tracker.closed(a)
        self.assertEqual(results, [])
        tracker.closed(b)
        self.assertEqual(results, [0])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(a.aborted or b.aborted)

    def test_drain_aborts_what_is_left_at_the_deadline(self) -> None:
        clock, tracker = Clock(), ConnectionTracker()
        a, b = _Conn(), _Conn()
        tracker.opened("x", a)
        tracker.opened("x", b)
        tracker.closed(b)
        results: list[int] = []
        tracker.drain(5.0, clock).addCallback(results.append)
        clock.advance(4.9)
        self.assertEqual(results, [])
        clock.advance(0.1)
        self.assertTrue(a.aborted)
        # The abort ends the connection a turn later (with its log line): waited for.
        self.assertEqual(results, [])
        tracker.closed(a)
        self.assertEqual(results, [1])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(b.aborted)
        self.assertEqual(tracker.total_accepted["x"], 2)
        # Its log line says why, not "client reset" (what the abort would make of it).
        self.assertEqual(a.record.close_reason, "drain_timeout (5s) passed")
        self.assertIsNone(b.record.close_reason)

    def test_an_aborted_connection_that_never_ends_holds_the_stop_only_briefly(self) -> None:
        clock, tracker = Clock(), ConnectionTracker()
        stuck = _Conn()
        tracker.opened("x", stuck)
        results: list[int] = []
        tracker.drain(5.0, clock).addCallback(results.append)
        clock.advance(5.0)
        self.assertTrue(stuck.aborted)
        clock.advance(ABORT_GRACE - 0.01)
        self.assertEqual(results, [])
        clock.advance(0.01)
        self.assertEqual(results, [1])
        tracker.closed(stuck)  # late: nothing fires twice
        self.assertEqual(results, [1])

    def test_nothing_open_drains_at_once(self) -> None:
        results: list[int] = []
        ConnectionTracker().drain(5.0, Clock()).addCallback(results.append)
        self.assertEqual(results, [0])


class StatusPageTests(SynchronousTestCase):
    def snapshot(self, errors: RecentErrors) -> Snapshot:
        return Snapshot(
            version="0.1.0", source="/etc/gatekeep/gk.toml", started=1000.0, now=4723.0,
            reloads=3, last_reload="applied", admin="127.0.0.1:9100",
            listeners=(ListenerStatus("public", "tcp:443", "0.0.0.0:443", "edge", 7, 1234),),
            services=(ServiceStatus("edge", "web", (
                RouteStatus("xmpp", "tls alpn=xmpp-client", "forward to tcp:127.0.0.1:5223", 5),
                RouteStatus("<web>", "(catch-all)", "forward to tcp:127.0.0.1:8443", 1229, 6),
            )),),
            errors=tuple(errors.lines))

    def test_page_shows_listeners_routes_counts_and_escapes(self) -> None:
        errors = RecentErrors(size=2)
        log = Logger(namespace="t")
        with captured_log() as _:
            from twisted.logger import globalLogPublisher

            globalLogPublisher.addObserver(errors)
            try:
                log.info("not an error")
                log.warn("first <warning>")
                log.error("backend <b>down</b>")
                log.error("third")
            finally:
                globalLogPublisher.removeObserver(errors)
        self.assertEqual([e.text for e in errors.lines], ["backend <b>down</b>", "third"])
        page = render_status(self.snapshot(errors)).decode()
        self.assertTrue(page.startswith("<!DOCTYPE html>"))
        self.assertNotIn("<script", page)
        for text in ("public", "tcp:443", "0.0.0.0:443", ">7<", ">1234<", "tls alpn=xmpp-client",
                     "forward to tcp:127.0.0.1:5223", ">1229<", ">6<", "up 01:02:03",
                     "backend &lt;b&gt;down&lt;/b&gt;", "&lt;web&gt;"):
            self.assertIn(text, page)
        self.assertNotIn("<b>down", page)
        self.assertNotIn("first", page)  # pushed out of the ring

    def test_failed_connections_are_recent_errors(self) -> None:
        errors = RecentErrors()
        errors({"log_namespace": "gatekeep.connection", "log_level": LogLevel.info,
                "log_format": "{client} failed", "client": "1.2.3.4:5",
                "outcome": "backend_error", "log_time": 0.0})
        errors({"log_namespace": "gatekeep.connection", "log_level": LogLevel.info,
                "log_format": "fine", "outcome": "ok", "log_time": 0.0})
        self.assertEqual([(e.level, e.text) for e in errors.lines],
                         [("error", "1.2.3.4:5 failed")])


class ObserverForTests(SynchronousTestCase):
    def test_json_to_the_logfile_twistd_was_given(self) -> None:
        import os
        import tempfile

        from twisted.logger import LogPublisher
        from twisted.python.usage import UsageError

        from gatekeep.logformat import observer_for
        from gatekeep.tap import Options

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "gk.log")
            publisher = LogPublisher()
            publisher.addObserver(observer_for("json", path, nodaemon=False))
            Logger(namespace="t", observer=publisher).info("hello {who}", who="you")
            with open(path, encoding="utf-8") as log_file:
                [line] = log_file.read().splitlines()
        self.assertEqual((json.loads(line)["message"], json.loads(line)["who"]),
                         ("hello you", "you"))
        with self.assertRaises(UsageError):
            Options().parseOptions(["--log-format", "xml"])
