"""Reading a launched tor's output: when its control port is ready, why it died."""

from __future__ import annotations

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.onion.control import TorError
from gatekeep.onion.launch import _TorProcess
from tests.helpers import captured_log

OPENING = b"Nov 28 03:51:26.438 [notice] Opening Control listener on 127.0.0.1:0\n"
READY = (b"Nov 28 03:51:26.438 [notice] Opened Control listener connection (ready) on "
         b"127.0.0.1:39657\n")
UNKNOWN = (b"Nov 28 03:51:42.411 [warn] Failed to parse/validate config: Unknown option "
           b"'NoSuchOption'.  Failing.\n")
FAILED = b"Nov 28 03:51:42.411 [err] Reading config failed--see warnings above.\n"


class TorProcessTests(SynchronousTestCase):
    def test_ready_only_once_the_port_is_open_whatever_the_chunks(self) -> None:
        process = _TorProcess("hidden")
        output = OPENING + READY
        for byte in range(len(output)):  # one byte at a time
            process.outReceived(output[byte:byte + 1])
            if byte < len(output) - 1:
                self.assertNoResult(process.ready)
        self.assertEqual(self.successResultOf(process.ready), "127.0.0.1:39657")

    def test_early_exit_says_what_tor_said(self) -> None:
        process = _TorProcess("hidden")
        with captured_log("gatekeep.onion.launch") as events:
            process.errReceived(UNKNOWN + FAILED)
        self.assertEqual([e["line"] for e in events], [
            "Failed to parse/validate config: Unknown option 'NoSuchOption'.  Failing.",
            "Reading config failed--see warnings above."])
        process.processEnded(Failure(ProcessTerminated(exitCode=1)))
        failure = self.failureResultOf(process.ready, TorError)
        self.assertEqual(str(failure.value), (
            "tor exited before opening its control port (exit status 1): Failed to "
            "parse/validate config: Unknown option 'NoSuchOption'.  Failing. | Reading "
            "config failed--see warnings above."))
        self.assertIsNone(self.successResultOf(process.ended))
        self.assertTrue(process.reason is not None and process.reason.check(ProcessTerminated))

    def test_killed_and_clean_exits(self) -> None:
        killed = _TorProcess("hidden")
        killed.processEnded(Failure(ProcessTerminated(signal=9)))
        self.assertIn("(killed by signal 9)", str(self.failureResultOf(killed.ready).value))
        clean = _TorProcess("hidden")
        clean.outReceived(READY)
        clean.processEnded(Failure(ProcessDone(0)))
        self.assertEqual(self.successResultOf(clean.ready), "127.0.0.1:39657")
