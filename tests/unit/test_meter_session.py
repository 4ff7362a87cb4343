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
