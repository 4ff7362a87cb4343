"""`UsageAdapter.complete`: the provider's terminal event lets the meter book before the end of
the body (which Envoy's observability mode does not always forward). Checked on every recorded
stream of the corpus, fed in small pieces: the first moment the adapter says complete, finishing
there gives exactly what the whole body gives; and the providers with a terminal event show it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_corpus import STREAM_ROWS, body, context
from tokenbook.usage import open_adapter

# The APIs whose streams end with a terminal event tokenbook relies on, and how a recorded
# body shows it (None: every successful stream of the API ends with it).
TERMINAL_MARKS: dict[str, tuple[bytes, ...] | None] = {
    "chat": (b"[DONE]",),
    "completions": (b"[DONE]",),
    "responses": (b"response.completed",),
    "messages": (b"message_stop",),
    "ollama_chat": (b'"done":true',),
    "ollama_generate": (b'"done":true',),
    "cohere_chat_v1": (b'"stream-end"',),
    "cohere_chat_v2": (b'"message-end"',),
    "converse": (b"metadata",),  # the event-type header of ConverseStream's last event
    "invoke": None,  # the invocation metrics, inside the last chunk's base64 payload
}


def _complete_at(row: dict[str, Any], step: int) -> tuple[int | None, object, object]:
    data = body(row)
    adapter = open_adapter(context(row))
    at = None
    early = None
    for i in range(0, len(data), step):
        adapter.feed(data[i : i + step])
        if adapter.complete:
            at = i + step
            early = adapter.finish(end_of_stream=True)
            break
    whole = open_adapter(context(row))
    whole.feed(data)
    return at, early, whole.finish(end_of_stream=True)


@pytest.mark.parametrize("row", STREAM_ROWS, ids=[r["file"] for r in STREAM_ROWS])
def test_complete_only_when_nothing_after_it_counts(row: dict[str, Any]) -> None:
    at, early, whole = _complete_at(row, step=37)
    if at is not None:
        assert early == whole


def test_streams_with_a_terminal_event_are_complete_before_their_end() -> None:
    completed, candidates = [], []
    apis = set()
    for row in STREAM_ROWS:
        if row["api"] not in TERMINAL_MARKS or row["http_status"] != 200:
            continue
        marks = TERMINAL_MARKS[row["api"]]
        data = body(row)
        if marks is not None and not any(mark in data for mark in marks):
            continue
        apis.add(row["api"])
        candidates.append(row["file"])
        at, _, _ = _complete_at(row, step=37)
        if at is not None:
            completed.append(row["file"])
    assert len(candidates) > 30  # the corpus, not an empty selection
    assert apis == set(TERMINAL_MARKS)  # every API above has a recorded stream
    assert completed == candidates
