"""
A blocking tor control-port client for test code (fixtures and assertions), on the
standard library only: the tests must be able to look at tor without gatekeep's
own control code, which is what they check.
"""

from __future__ import annotations

import contextlib
import socket
import time

__all__ = ["ControlError", "TorControlClient"]


class ControlError(RuntimeError):
    """tor answered a command with an error, or did not answer in time."""


class TorControlClient:
    """One authenticated control connection (password, or cookie file contents)."""

    def __init__(self, port: int, *, password: str | None = None,
                 cookie: bytes | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        #: Asynchronous events (650 lines) seen so far, after SETEVENTS.
        self.events: list[str] = []
        if password is not None:
            escaped = password.replace("\\", "\\\\").replace('"', '\\"')
            self.command(f'AUTHENTICATE "{escaped}"')
        elif cookie is not None:
            self.command(f"AUTHENTICATE {cookie.hex()}")
        else:
            self.command("AUTHENTICATE")

    def _line(self) -> str:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ControlError("tor closed the control connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def command(self, line: str) -> list[str]:
        """Send one command; the reply's lines without status codes (data blocks joined)."""
        self.sock.sendall(line.encode() + b"\r\n")
        lines: list[str] = []
        while True:
            reply = self._line()
            if reply.startswith("650"):
                self.events.append(reply[4:])  # asynchronous events are not replies
                continue
            status, kind, text = reply[:3], reply[3:4], reply[4:]
            if not status.startswith("2"):
                raise ControlError(f"{line.split(' ', 1)[0]}: {reply}")
            if kind == "+":
                block = [text]
                while (data := self._line()) != ".":
                    block.append(data[1:] if data.startswith("..") else data)
                lines.append("\n".join(block))
            else:
                lines.append(text)
            if kind == " ":
                return lines

    def getinfo(self, key: str) -> str:
        for line in self.command(f"GETINFO {key}"):
            if line.startswith(key + "="):
                return line[len(key) + 1:]
        raise ControlError(f"no {key} in the reply")

    def getconf(self, key: str) -> list[str]:
        return [line for line in self.command(f"GETCONF {key}") if "=" in line]

    def wait_bootstrapped(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while "PROGRESS=100" not in (phase := self.getinfo("status/bootstrap-phase")):
            if time.monotonic() > deadline:
                raise ControlError(f"tor did not bootstrap within {timeout:g}s: {phase}")
            time.sleep(0.2)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT\r\n")
        self.sock.close()
