"""
What the ``/status`` page shows, as plain data, and the page itself.

The page is one HTML document with inline CSS: no scripts, no build step, nothing
fetched from elsewhere, so it works from a browser on an air-gapped admin
network. Every value is escaped: names come from the config, errors may quote
client data.
"""

from __future__ import annotations

import collections
import html
from collections.abc import Sequence
from datetime import UTC, datetime

import attrs
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from zope.interface import implementer

__all__ = [
    "ListenerStatus",
    "RecentErrors",
    "RouteStatus",
    "ServiceStatus",
    "Snapshot",
    "render_status",
]


@attrs.frozen
class ListenerStatus:
    name: str
    endpoint: str
    address: str
    service: str
    open: int
    accepted: int


@attrs.frozen
class RouteStatus:
    name: str
    match: str
    action: str
    connections: int
    open: int = 0


@attrs.frozen
class ServiceStatus:
    name: str
    default: str | None
    routes: tuple[RouteStatus, ...]


@attrs.frozen
class ErrorLine:
    time: float
    level: str
    text: str


@attrs.frozen
class Snapshot:
    version: str
    source: str
    started: float
    now: float
    reloads: int
    last_reload: str
    listeners: tuple[ListenerStatus, ...]
    services: tuple[ServiceStatus, ...]
    errors: tuple[ErrorLine, ...]
    admin: str = "-"


_SHOWN = frozenset(level for level in LogLevel.iterconstants() if level >= LogLevel.warn)


@implementer(ILogObserver)
class RecentErrors:
    """
    Keeps the last ``size`` warnings and errors from the log, and connections that
    ended on a backend failure, for the status page.
    """

    def __init__(self, size: int = 50) -> None:
        self.lines: collections.deque[ErrorLine] = collections.deque(maxlen=size)

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        failed_connection = (event.get("outcome") in ("backend_error", "error")
                             and event.get("log_namespace") == "gatekeep.connection")
        # (a set lookup: LogLevel's ordering is a Python-level comparison, and every
        # connection line passes here)
        if not failed_connection and level not in _SHOWN:
            return
        try:
            text = formatEvent(event)
        except Exception:  # noqa: BLE001 - a bad event must not break logging
            text = repr(event.get("log_format"))
        shown = "error" if failed_connection else (level.name if level else "?")
        self.lines.append(ErrorLine(event.get("log_time") or 0.0, shown, text))


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _row(cells: Sequence[object], numeric: Sequence[int] = ()) -> str:
    parts = []
    for index, cell in enumerate(cells):
        css = ' class="n"' if index in numeric else ""
        parts.append(f"<td{css}>{html.escape(str(cell))}</td>")
    return "<tr>" + "".join(parts) + "</tr>"


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em 2em; color: #1d232b;
       background: #f6f7f9; }
h1 { font-size: 1.5em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.6em 0 .5em; }
.meta { color: #56606b; margin: 0 0 1em; }
table { border-collapse: collapse; background: #fff; min-width: 40em;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
th, td { padding: .35em .8em; border-bottom: 1px solid #e3e6ea; text-align: left;
         vertical-align: top; }
th { background: #2f3b48; color: #fff; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, td { font-family: ui-monospace, monospace; font-size: .92em; }
.empty { color: #56606b; font-style: italic; }
.warn td:nth-child(2) { color: #9a6700; } .error td:nth-child(2) { color: #b42318; }
"""


def render_status(snap: Snapshot) -> bytes:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="refresh" content="10">',
        f"<title>gatekeep status</title><style>{_STYLE}</style></head><body>",
        "<h1>gatekeep status</h1>",
        f'<p class="meta">version {esc(snap.version)} &middot; config <code>'
        f"{esc(snap.source or '-')}</code> &middot; up {_duration(snap.now - snap.started)}"
        f" &middot; reloads {snap.reloads} &middot; last reload: {esc(snap.last_reload)}"
        f" &middot; page at {_when(snap.now)}</p>",
        "<h2>Listeners</h2>",
        "<table><tr><th>listener</th><th>endpoint</th><th>address</th><th>service</th>"
        "<th>open</th><th>accepted</th></tr>",
    ]
    for lst in snap.listeners:
        out.append(_row([lst.name, lst.endpoint, lst.address, lst.service, lst.open,
                         lst.accepted], numeric=(4, 5)))
    out.append("</table>")
    for service in snap.services:
        default = service.default or "none (unmatched connections are rejected)"
        out.append(f"<h2>Service {esc(service.name)}</h2>"
                   f'<p class="meta">default route: {esc(default)}</p>')
        out.append("<table><tr><th>#</th><th>route</th><th>match</th><th>action</th>"
                   "<th>open</th><th>finished</th></tr>")
        for number, route in enumerate(service.routes, 1):
            out.append(_row([number, route.name, route.match, route.action, route.open,
                             route.connections], numeric=(0, 4, 5)))
        out.append("</table>")
    out.append("<h2>Recent errors</h2>")
    if not snap.errors:
        out.append('<p class="empty">none since start</p>')
    else:
        out.append("<table><tr><th>time</th><th>level</th><th>message</th></tr>")
        for line in reversed(snap.errors):
            css = "error" if line.level in ("error", "critical") else "warn"
            out.append(f'<tr class="{css}"><td>{_when(line.time)}</td><td>{esc(line.level)}'
                       f"</td><td>{esc(line.text)}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out).encode("utf-8")
