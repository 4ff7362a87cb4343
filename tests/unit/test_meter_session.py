"""`MeterSession`'s clock: a request's duration and time to first token start when the request
began, also for a meter that first hears of it with the response headers (the shipped config:
no request-headers phase, the start as Envoy's `request.time`)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from tokenbook.booking import Booker, Booking, Outcome
from tokenbook.meter import MeterSession
from tokenbook.requestinfo import RequestInfo

JSON_HEADERS = [(":status", "200"), ("content-type", "application/json")]


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _Recorder:
    """Stands in for `Booker` (which the e2e tests exercise with real metrics and Redis)."""

    def __init__(self) -> None:
        self.bookings: list[Booking] = []

    def book(self, booking: Booking) -> None:
        self.bookings.append(booking)


def _run(corpus_dir: Path, started_wall: float | None) -> Booking:
    body = (corpus_dir / "openai/chat/nonstream_prompt_cache_hit.json").read_bytes()
    mono, wall = _Clock(100.0), _Clock(1_000.0)
    recorder = _Recorder()
    session = MeterSession(
        cast(Booker, recorder), max_json_bytes=1 << 20, clock=mono, wall_clock=wall
    )
    req = RequestInfo("openai", "openai", "POST", "/openai/v1/chat/completions", "rid-1")
    session.on_request_headers(req, {"key_id": "k1"}, started_wall=started_wall)
    session.on_response_headers(200, JSON_HEADERS, end_of_stream=False)
    mono.now = 100.5
    session.on_response_body(body, end_of_stream=False)
    mono.now = 101.0
    session.on_response_body(b"", end_of_stream=True)
    (booking,) = recorder.bookings
    assert booking.outcome is Outcome.OK
    return booking


def test_the_start_is_the_request_time_when_it_is_given(corpus_dir: Path) -> None:
    booking = _run(corpus_dir, started_wall=998.0)  # the request began 2 s ago
    assert booking.duration_s == pytest.approx(3.0)
    assert booking.ttft_s == pytest.approx(2.5)


def test_without_a_request_time_the_start_is_the_session(corpus_dir: Path) -> None:
    booking = _run(corpus_dir, started_wall=None)
    assert booking.duration_s == pytest.approx(1.0)
    assert booking.ttft_s == pytest.approx(0.5)


def test_a_request_time_in_the_future_counts_as_now(corpus_dir: Path) -> None:
    # Envoy's clock ahead of ours (another host): never a negative or shortened duration.
    booking = _run(corpus_dir, started_wall=1_005.0)
    assert booking.duration_s == pytest.approx(1.0)
    assert booking.ttft_s == pytest.approx(0.5)


def test_the_providers_last_event_books_without_the_end_of_stream(corpus_dir: Path) -> None:
    # Envoy's observability mode may never send the end of stream (it came on its own after the
    # last bytes): `[DONE]` is enough, and the caller learns that it can end the stream.
    body = (corpus_dir / "openai/chat/stream_include_usage_reasoning.sse").read_bytes()
    head, done = body[: body.rindex(b"data: [DONE]")], body[body.rindex(b"data: [DONE]") :]
    recorder = _Recorder()
    session = MeterSession(cast(Booker, recorder), max_json_bytes=1 << 20)
    req = RequestInfo("openai", "openai", "POST", "/openai/v1/chat/completions", "rid-2")
    session.on_request_headers(req, {"key_id": "k1"})
    session.on_response_headers(
        200, [(":status", "200"), ("content-type", "text/event-stream")], end_of_stream=False
    )
    assert session.on_response_body(head, end_of_stream=False) is False
    assert not recorder.bookings
    assert session.on_response_body(done, end_of_stream=False) is True
    (booking,) = recorder.bookings
    assert booking.outcome is Outcome.OK
    assert booking.extraction.usage.reasoning == 100
    session.close()  # the stream's end, later: booked once
    assert len(recorder.bookings) == 1
