"""
The ``[admin]`` listener of a ``workers = N`` parent.

Each worker serves its own admin pages on a private UNIX socket; the parent asks
every live worker and merges: ``/metrics`` has each worker's series with a
``worker="N"`` label added (so ``sum without (worker) (...)`` gives the totals of
the whole gateway), ``/health`` is ``ok`` while every worker runs (503 otherwise),
``/status`` is one worker's page (``?worker=N``, default 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gatekeep import metrics

if TYPE_CHECKING:
    from gatekeep.workers import SupervisorService

__all__ = ["merge_expositions", "supervisor_site"]


def _labelled(line: str, worker: int) -> str:
    name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
    if name_end < 0:
        return line
    if line[name_end] == "{":
        inside = line[name_end + 1:]
        sep = "" if inside.startswith("}") else ","
        return f'{line[:name_end]}{{worker="{worker}"{sep}{inside}'
    return f'{line[:name_end]}{{worker="{worker}"}}{line[name_end:]}'


def merge_expositions(texts: dict[int, str]) -> str:
    """Prometheus text expositions of several workers as one, by metric family."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker, text in sorted(texts.items()):
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2]
                seen = headers.setdefault(family, [])
                samples.setdefault(family, [])
                if line not in seen:
                    seen.append(line)
            elif line and not line.startswith("#"):
                samples.setdefault(family, []).append(_labelled(line, worker))
    out: list[str] = []
    for family, lines in samples.items():
        out += headers.get(family, [])
        out += lines
    return "\n".join(out) + "\n"


class _Get(protocol.Protocol):
    """``GET path`` over a worker's private socket (HTTP/1.0: the body ends at close)."""

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.received: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET " + self.path + b" HTTP/1.0\r\nHost: worker\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        head, _, body = b"".join(self.received).partition(b"\r\n\r\n")
        if head.split(b" ", 2)[1:2] == [b"200"]:
            self.done.callback(body)
        else:
            self.done.errback(ValueError(f"worker answered {head[:40]!r}"))


def _fetch(supervisor: SupervisorService, index: int, path: bytes) -> defer.Deferred[bytes]:
    endpoint = UNIXClientEndpoint(supervisor.reactor, supervisor.private_admin(index),
                                  timeout=5)
    get = _Get(path)
    connecting: defer.Deferred[Any] = endpoint.connect(_Once(get))
    connecting.addCallback(lambda _: get.done)
    return connecting


class _Once(protocol.Factory):
    noisy = False

    def __init__(self, built: protocol.Protocol) -> None:
        self.built = built

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.built


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, supervisor: SupervisorService) -> None:
        super().__init__()
        self.supervisor = supervisor

    def render_GET(self, request: Request) -> Any:
        indexes = [w.index for w in self.supervisor.alive()]
        fetching = [_fetch(self.supervisor, i, b"/metrics") for i in indexes]

        def merged(results: list[tuple[bool, Any]]) -> None:
            texts = {i: body.decode() for i, (ok, body) in zip(indexes, results, strict=True)
                     if ok}
            request.setHeader(b"content-type", metrics.CONTENT_TYPE.encode())
            request.setHeader(b"cache-control", b"no-store")
            request.write(merge_expositions(texts).encode())
            request.finish()

        defer.DeferredList(fetching, consumeErrors=True).addCallback(merged)
        return NOT_DONE_YET


class _Status(Resource):
    isLeaf = True

    def __init__(self, supervisor: SupervisorService) -> None:
        super().__init__()
        self.supervisor = supervisor

    def render_GET(self, request: Request) -> Any:
        try:
            index = int((request.args or {}).get(b"worker", [b"1"])[0])
        except ValueError:
            index = 1

        def shown(body: bytes) -> None:
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.write(body)
            request.finish()

        def failed(_: object) -> None:
            request.setResponseCode(503)
            request.write(f"worker {index} did not answer\n".encode())
            request.finish()

        _fetch(self.supervisor, index, b"/status").addCallbacks(shown, failed)
        return NOT_DONE_YET


class _Health(Resource):
    isLeaf = True

    def __init__(self, supervisor: SupervisorService) -> None:
        super().__init__()
        self.supervisor = supervisor

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        alive, wanted = len(self.supervisor.alive()), self.supervisor.count
        if alive < wanted:
            request.setResponseCode(503)
            return f"{alive} of {wanted} workers running\n".encode()
        return b"ok\n"


class _QuietSite(Site):
    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


def supervisor_site(supervisor: SupervisorService) -> Site:
    root: Any = Resource()
    root.putChild(b"metrics", _Metrics(supervisor))
    root.putChild(b"status", _Status(supervisor))
    root.putChild(b"health", _Health(supervisor))
    return _QuietSite(root)
