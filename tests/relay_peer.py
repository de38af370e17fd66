"""
A byte source and sink for the relay tests, run as a separate process.

    relay_peer.py backend SEED SIZE      listen, print the port, then exchange
    relay_peer.py client PORT SEED SIZE  connect, exchange

Each side sends SIZE pseudo-random bytes (from SEED), then shuts down its write
side (half-close), reads until EOF and prints one JSON line with the sha256 and
length of what it received and of what it sent. With --wait-go, a side reads
nothing until a line arrives on stdin (a slow reader). With --after-eof, a side
first reads until the other's EOF and only then sends (so the other side's
half-close must travel first and the connection stay open the other way). With
--reset-after=N, a side resets the connection (RST) once it received N bytes; the
report of a side whose connection was reset has "error" set.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import sys
import threading

CHUNK = 256 * 1024


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def exchange(sock: socket.socket, data: bytes, wait_go: bool, after_eof: bool = False,
             reset_after: int | None = None) -> None:
    sent = hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    received = 0
    errors: list[str] = []
    if reset_after is not None:
        while received < reset_after and (chunk := sock.recv(CHUNK)):
            received += len(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        print(json.dumps({"received": received, "reset": True}), flush=True)
        return
    if after_eof:
        while chunk := sock.recv(CHUNK):
            digest.update(chunk)
            received += len(chunk)

    def send() -> None:
        view = memoryview(data)
        try:
            for start in range(0, len(view), CHUNK):
                sock.sendall(view[start:start + CHUNK])
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            errors.append(f"send: {error}")

    sender = threading.Thread(target=send)
    sender.start()
    if wait_go:
        sys.stdin.readline()
    try:
        while chunk := sock.recv(CHUNK):
            digest.update(chunk)
            received += len(chunk)
    except OSError as error:
        errors.append(f"recv: {error}")
    sender.join()
    sock.close()
    print(json.dumps({"received_sha256": digest.hexdigest(), "received": received,
                      "sent_sha256": sent, "sent": len(data),
                      "error": "; ".join(errors) or None}), flush=True)


def main(argv: list[str]) -> None:
    wait_go = "--wait-go" in argv
    after_eof = "--after-eof" in argv
    resets = [int(a.split("=", 1)[1]) for a in argv if a.startswith("--reset-after=")]
    reset_after = resets[0] if resets else None
    argv = [a for a in argv if not a.startswith("--")]
    if argv[0] == "backend":
        seed, size = int(argv[1]), int(argv[2])
        data = payload(seed, size)
        with socket.create_server(("127.0.0.1", 0)) as server:
            print(server.getsockname()[1], flush=True)
            conn, _ = server.accept()
        exchange(conn, data, wait_go, after_eof, reset_after)
    else:
        port, seed, size = int(argv[1]), int(argv[2]), int(argv[3])
        data = payload(seed, size)
        exchange(socket.create_connection(("127.0.0.1", port)), data, wait_go, after_eof,
                 reset_after)


if __name__ == "__main__":
    main(sys.argv[1:])
