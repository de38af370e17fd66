"""
The Python floor: the least a Python process can spend proxying like gatekeep.

A bench subject, not part of gatekeep. It makes the system calls gatekeep's splice
path makes for a ``forward`` route (accept, one read to look at the first byte,
a non-blocking connect, the sniffed bytes written, ``splice(2)`` through a pipe
per direction, ``shutdown`` on EOF, two closes) and no other work: no detectors,
routes, access rules, timeouts, log line, metrics or Twisted. Its figures say how
much of gatekeep's cost per connection is Python making those calls at all, and
how much is gatekeep's own work on top.

Usage: ``python pyfloor.py LISTEN_PORT BACKEND_PORT TLS_PORT`` (all on 127.0.0.1).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys

FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
CHUNK = 1 << 20
IN, OUT, RDHUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLRDHUP
AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


class Side:
    """One socket, and the direction that reads it: this socket -> pipe -> peer."""

    __slots__ = ("conn", "ended", "events", "fd", "peer", "pipe", "queued", "shut", "sock")

    def __init__(self, sock: socket.socket, conn: Conn) -> None:
        self.sock, self.fd, self.conn = sock, sock.fileno(), conn
        self.peer: Side | None = None
        self.pipe: tuple[int, int] | None = None  # from the pool while bytes are in it
        self.queued = 0  # bytes in the pipe, read from this socket
        self.ended = False  # EOF read from this socket
        self.shut = False  # ...and passed on to the peer's socket
        self.events = IN | RDHUP


class Conn:
    __slots__ = ("closed", "sides")

    def __init__(self) -> None:
        self.sides: tuple[Side, ...] = ()
        self.closed = False


#: Empty pipes, as gatekeep keeps them: a direction holds one only while bytes are in it.
POOL: list[tuple[int, int]] = []


def take_pipe() -> tuple[int, int]:
    return POOL.pop() if POOL else os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


def give_pipe(pipe: tuple[int, int]) -> None:
    if len(POOL) < 64:
        POOL.append(pipe)
    else:
        os.close(pipe[0])
        os.close(pipe[1])


class Floor:
    def __init__(self, port: int, backend: int, tls: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.backend, self.tls = ("127.0.0.1", backend), ("127.0.0.1", tls)
        self.epoll = select.epoll()
        self.epoll.register(self.listener.fileno(), IN)
        self.sniffing: dict[int, socket.socket] = {}
        self.sides: dict[int, Side] = {}

    def run(self) -> None:
        listening = self.listener.fileno()
        while True:
            for fd, events in self.epoll.poll():
                if fd == listening:
                    self.accept()
                elif fd in self.sniffing:
                    self.sniff(fd)
                else:
                    side = self.sides.get(fd)
                    if side is not None:
                        self.ready(side, events)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE and such: try again on the next event
                return
            sock.setblocking(False)
            self.sniffing[sock.fileno()] = sock
            self.epoll.register(sock.fileno(), IN | RDHUP)

    def sniff(self, fd: int) -> None:
        sock = self.sniffing.pop(fd)
        try:
            first = sock.recv(16384)
        except OSError:
            first = b""
        if not first:
            self.epoll.unregister(fd)
            sock.close()
            return
        backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        backend.connect_ex(self.tls if first[0] == 0x16 else self.backend)
        try:
            backend.getpeername()  # connected (a loopback connect usually is at once)
            sent = backend.send(first)
        except OSError:
            sent = -1
        if sent != len(first):  # refused, not yet connected or short: out of scope
            self.epoll.unregister(fd)
            sock.close()
            backend.close()
            return
        conn = Conn()
        client, far = Side(sock, conn), Side(backend, conn)
        client.peer, far.peer = far, client
        conn.sides = (client, far)
        self.sides[fd] = client
        self.sides[far.fd] = far
        self.epoll.register(far.fd, IN | RDHUP)  # the client's registration stays

    def ready(self, side: Side, events: int) -> None:
        peer = side.peer
        assert peer is not None
        if events & select.EPOLLERR:
            self.close(side.conn)  # a reset: both connections end
            return
        try:
            if events & OUT:
                self.flush(peer)  # the pipe of the direction that writes to this socket
            if events & (IN | RDHUP | select.EPOLLHUP) and not side.ended and side.queued == 0:
                if side.pipe is None:
                    side.pipe = take_pipe()
                moved = os.splice(side.fd, side.pipe[1], CHUNK, flags=FLAGS)
                if moved == 0:
                    side.ended = True
                else:
                    side.queued = moved
                self.flush(side)
        except OSError as error:
            if error.errno not in AGAIN:
                self.close(side.conn)
                return
        self.watch(side)
        self.watch(peer)
        if side.shut and peer.shut:
            self.close(side.conn)

    def flush(self, side: Side) -> None:
        """Move ``side``'s pipe into its peer's socket; EOF once empty."""
        peer = side.peer
        assert peer is not None
        while side.queued:
            assert side.pipe is not None
            try:
                moved = os.splice(side.pipe[0], peer.fd, side.queued, flags=FLAGS)
            except OSError as error:
                if error.errno in AGAIN:
                    return
                raise
            side.queued -= moved
        if side.pipe is not None:
            give_pipe(side.pipe)
            side.pipe = None
        if side.ended and not side.shut:
            side.shut = True
            peer.sock.shutdown(socket.SHUT_WR)

    def watch(self, side: Side) -> None:
        """Read while the pipe is empty; watch for writable while the peer's is not."""
        peer = side.peer
        assert peer is not None
        wanted = (0 if side.ended or side.queued else IN | RDHUP) | (OUT if peer.queued else 0)
        if wanted != side.events and not side.conn.closed:
            side.events = wanted
            self.epoll.modify(side.fd, wanted)

    def close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        for side in conn.sides:
            del self.sides[side.fd]
            side.sock.close()  # (leaves the epoll set with it)
            if side.pipe is not None:  # (bytes may be in it: not for the pool)
                os.close(side.pipe[0])
                os.close(side.pipe[1])


def main() -> None:
    port, backend, tls = (int(arg) for arg in sys.argv[1:4])
    Floor(port, backend, tls).run()


if __name__ == "__main__":
    main()
