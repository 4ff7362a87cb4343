"""`UsageAdapter.complete`: the provider's terminal event lets the meter book before the end of
the body (which Envoy's observability mode does not always forward). Checked on every recorded
stream of the corpus, fed in small pieces: the first moment the adapter says complete, finishing
there gives exactly what the whole body gives; and the providers with a terminal event show it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_corpus import STREAM_ROWS, body, context
from tokenbook.usage import open_adapter

# The APIs whose recorded streams end with a terminal event tokenbook relies on, and its marks.
TERMINAL_APIS = {"chat", "completions", "responses", "messages"}
MARKS = (b"[DONE]", b"event: message_stop", b"response.completed")


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
    for row in STREAM_ROWS:
        if row["api"] not in TERMINAL_APIS or row["http_status"] != 200:
            continue
        data = body(row)
        if (
            b"[DONE]" not in data
            and b"message_stop" not in data
            and b"response.completed" not in data
        ):
            continue
        candidates.append(row["file"])
        at, _, _ = _complete_at(row, step=37)
        if at is not None:
            completed.append(row["file"])
    assert len(candidates) > 20  # the corpus, not an empty selection
    assert completed == candidates
