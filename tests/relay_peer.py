"""
A byte source and sink for the relay tests, run as a separate process.

    relay_peer.py backend SEED SIZE      listen, print the port, then exchange
    relay_peer.py client PORT SEED SIZE  connect, exchange

Each side sends SIZE pseudo-random bytes (from SEED), then shuts down its write
side (half-close), reads until EOF and prints one JSON line with the sha256 and
length of what it received and of what it sent. With --wait-go, a client reads
nothing until a line arrives on stdin (a slow reader).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sys
import threading

CHUNK = 256 * 1024


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def exchange(sock: socket.socket, data: bytes, wait_go: bool) -> None:
    sent = hashlib.sha256(data).hexdigest()

    def send() -> None:
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            sock.sendall(view[start:start + CHUNK])
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    if wait_go:
        sys.stdin.readline()
    digest = hashlib.sha256()
    received = 0
    while chunk := sock.recv(CHUNK):
        digest.update(chunk)
        received += len(chunk)
    sender.join()
    sock.close()
    print(json.dumps({"received_sha256": digest.hexdigest(), "received": received,
                      "sent_sha256": sent, "sent": len(data)}), flush=True)


def main(argv: list[str]) -> None:
    wait_go = "--wait-go" in argv
    argv = [a for a in argv if a != "--wait-go"]
    if argv[0] == "backend":
        seed, size = int(argv[1]), int(argv[2])
        data = payload(seed, size)
        with socket.create_server(("127.0.0.1", 0)) as server:
            print(server.getsockname()[1], flush=True)
            conn, _ = server.accept()
        exchange(conn, data, wait_go)
    else:
        port, seed, size = int(argv[1]), int(argv[2]), int(argv[3])
        data = payload(seed, size)
        exchange(socket.create_connection(("127.0.0.1", port)), data, wait_go)


if __name__ == "__main__":
    main(sys.argv[1:])
