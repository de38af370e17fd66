"""
Client-controlled text (facts from detectors and plugins, addresses, error messages)
must never break a JSON log line or inject markup into the status page.
"""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeep.connlog import log_connection
from gatekeep.logformat import event_as_json
from gatekeep.status import (
    ErrorLine,
    ListenerStatus,
    RouteStatus,
    ServiceStatus,
    Snapshot,
    render_status,
)
from gatekeep.values import ConnectionRecord
from tests.helpers import captured_log

text = st.text(max_size=40)
fact_values = st.one_of(text, st.integers(), st.booleans(), st.none(),
                        st.lists(text, max_size=3).map(tuple))


@settings(max_examples=200, deadline=None)
@given(facts=st.dictionaries(st.text(min_size=1, max_size=10), fact_values, max_size=4),
       client=text, route=st.text(min_size=1, max_size=40), reason=text)
def test_a_connection_is_always_one_line_of_json(
    facts: dict[str, object], client: str, route: str, reason: str,
) -> None:
    record = ConnectionRecord("public", client, 0.0, protocol="x", facts=facts,  # type: ignore[arg-type]
                              route=route, bytes_in=1, bytes_out=2)
    record.close(reason)
    with captured_log("gatekeep.connection") as events:
        log_connection(record, 1.0)
    line = event_as_json(events[0])
    assert line.endswith("\n") and "\n" not in line[:-1]
    data = json.loads(line)
    assert (data["client"], data["route"], data["bytes_in"], data["bytes_out"]) == (
        client, route, 1, 2)
    assert data["facts"] == {k: list(v) if isinstance(v, tuple) else v for k, v in facts.items()}


@settings(max_examples=200, deadline=None)
@given(name=text, match=text, error=text)
def test_the_status_page_escapes_everything(name: str, match: str, error: str) -> None:
    snapshot = Snapshot(
        version="0", source=name, started=0.0, now=1.0, reloads=0, last_reload=name,
        listeners=(ListenerStatus(name, name, name, name, 1, 2),),
        services=(ServiceStatus(name, name, (RouteStatus(name, match, name, 3),)),),
        errors=(ErrorLine(0.0, "error", error),))
    page = render_status(snapshot).decode()
    # The only markup is ours: every tag in the page is one the renderer writes.
    tags = set(re.findall(r"<([^\s>]*)", page))
    tags = {tag.lstrip("/") for tag in tags}
    assert tags <= {"!DOCTYPE", "html", "head", "meta", "title", "style", "body", "h1", "h2",
                    "p", "code", "table", "tr", "th", "td"}
