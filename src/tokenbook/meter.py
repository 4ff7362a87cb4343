"""The meter's work for one response: feed the body to a usage adapter and book the result.

One `MeterSession` per ext_proc stream (per HTTP request), plain Python values only. The extproc
layer calls the `on_*` methods in Envoy's order and `close()` when the gRPC stream ends for any
reason. `on_request_headers` comes from the request-headers message where Envoy sends one, and
otherwise (the shipped config) from the response-headers message's attributes, just before
`on_response_headers`. A session books exactly once:

- at the end-of-stream body message (or response headers with end_of_stream), or at the
  provider's terminal event (`UsageAdapter.complete`: OpenAI's ``[DONE]``, Anthropic's
  ``message_stop``, a terminal Responses event, Cohere's ``message-end`` / ``stream-end``,
  Ollama's ``done`` line, Bedrock's last event), whichever comes first -> normal booking;
- at `close()` without an end-of-stream -> the stream was cut: booked as ``aborted`` with what
  the adapter could tell (stated numbers plus an estimate, marked ``source="estimated"``).

Nothing here can fail the user's request: the meter runs in observability mode, Envoy never
waits for it. Internal errors are counted and the booking still happens with what is known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from tokenbook.booking import Booker, Booking, outcome_for
from tokenbook.requestinfo import RequestInfo, model_from_path
from tokenbook.usage import open_adapter
from tokenbook.usage.types import Extraction, Reason, ResponseContext, Source, UsageAdapter

log = logging.getLogger("tokenbook.meter")

_ATTRIBUTION_FIELDS = ("key_id", "owner", "team", "agent", "workload")


class MeterSession:
    def __init__(
        self,
        booker: Booker,
        *,
        max_json_bytes: int,
        dialects: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._booker = booker
        self._max_json = max_json_bytes
        self._dialects = dialects or {}
        self._clock = clock
        self._wall_clock = wall_clock
        self._started = clock()
        self._first_byte: float | None = None
        self._last_byte: float | None = None
        self._req: RequestInfo | None = None
        self._attribution: dict[str, str] = {}
        self._status = 0
        self._adapter: UsageAdapter | None = None
        self._request_model: str | None = None
        self._admission_id = ""
        self.booked = False

    def on_request_headers(
        self, req: RequestInfo, metadata: Mapping[str, str], *, started_wall: float | None = None
    ) -> None:
        """The request; `started_wall` is when it began (epoch seconds), when that is earlier
        than this call: a meter that first hears of a request with its response headers."""
        self._req = req
        if started_wall is not None:
            # Durations stay on the monotonic clock; only the start is carried over. A start
            # in the future (clock skew between hosts) counts as now.
            self._started = self._clock() - max(0.0, self._wall_clock() - started_wall)
        # Attribution comes only from the gate's dynamic metadata: clients cannot set it.
        self._attribution = {
            name: str(metadata.get(name) or "unattributed") for name in _ATTRIBUTION_FIELDS
        }
        # The gate's admission id makes the booking idempotent (tokenbook.ledger.entry).
        self._admission_id = str(metadata.get("admission_id") or "")
        # The gate notes the body's `model` where it read the body; else the URL may name it.
        self._request_model = metadata.get("request_model") or model_from_path(req.provider_path)

    @property
    def knows_request(self) -> bool:
        """`on_request_headers` was called (from either message that carries the request)."""
        return self._req is not None

    def on_response_headers(
        self, status: int, headers: Sequence[tuple[str, str]], *, end_of_stream: bool
    ) -> None:
        req = self._req
        if req is None or req.provider is None:
            return  # not a tokenbook route, or request headers never seen: nothing to book
        self._status = status
        ctx = ResponseContext(
            provider=req.provider,
            path=req.provider_path,
            query=req.query,
            status=status,
            request_headers=dict(req.headers),
            response_headers=dict(headers),
            request_model=self._request_model,
            max_json_bytes=self._max_json,
        )
        self._adapter = open_adapter(ctx, dialect=self._dialects.get(req.provider))
        if end_of_stream:
            self._finish(end_of_stream=True)

    def on_response_body(self, chunk: bytes, *, end_of_stream: bool) -> bool:
        """Feed one body chunk; True once there is nothing more to read (booked, or the body
        ended unmetered)."""
        adapter = self._adapter
        if adapter is None:
            return end_of_stream
        if chunk:
            self._last_byte = self._clock()
            if self._first_byte is None:
                self._first_byte = self._last_byte
            adapter.feed(chunk)
            # The provider's terminal event: book now. Envoy's observability mode does not
            # forward an end of stream that comes on its own after the last bytes (common for
            # real SSE streams); the stream would otherwise wait for `deferred_close_timeout`.
            if adapter.complete:
                end_of_stream = True
        if end_of_stream:
            self._finish(end_of_stream=True)
        return self.booked

    def close(self) -> None:
        """The gRPC stream ended; book now if the end of the body was never seen."""
        if not self.booked and self._adapter is not None:
            self._finish(end_of_stream=False)

    def _finish(self, *, end_of_stream: bool) -> None:
        if self.booked or self._adapter is None or self._req is None:
            return
        self.booked = True
        try:
            extraction = self._adapter.finish(end_of_stream=end_of_stream)
        except Exception:  # an adapter bug must not lose the request: book it as usage_missing
            log.exception("usage adapter failed for provider %s", self._req.provider)
            extraction = Extraction(reason=Reason.PARSE_ERROR, source=Source.ESTIMATED)
        # Envoy 1.40 in observability mode does not forward an end of stream that arrives
        # on its own, after the last body bytes (a chunked upstream's final empty chunk): the
        # gRPC stream then just ends, `deferred_close_timeout` later. A body whose final,
        # provider-reported usage was seen is complete whatever the transport said.
        complete = end_of_stream or (
            extraction.reason is Reason.NONE and extraction.source is Source.REPORTED
        )
        # Duration ends with the last body byte, not with the (possibly deferred) stream close.
        now = self._clock() if end_of_stream else (self._last_byte or self._clock())
        model = extraction.model or self._request_model or "unknown"
        self._booker.book(
            Booking(
                request_id=self._req.request_id,
                provider=self._req.provider or "unknown",
                model=model,
                attribution=self._attribution,
                extraction=extraction,
                outcome=outcome_for(self._status, extraction, end_of_stream=complete),
                duration_s=now - self._started,
                ttft_s=(self._first_byte - self._started) if self._first_byte else None,
                admission_id=self._admission_id,
            )
        )
