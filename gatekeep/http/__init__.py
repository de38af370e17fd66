"""
The HTTP reverse proxy behind the ``http = "SITE"`` action ([http.SITE] tables).

Client side: a strict HTTP/1.1 reader of our own (:mod:`gatekeep.http.reader`),
so framing that could let gatekeep and a backend disagree about where a request
ends is refused, never guessed, and HTTP/2 (:mod:`gatekeep.http.h2server`); backend
side: HTTP/1.1 (:mod:`gatekeep.http.response`). Bodies stream both ways with
producer/consumer flow control; the request-target is passed on byte for byte.
"""

__all__: list[str] = []
