"""One processor object per ext_proc stream, independent of the gRPC transport.

A transport (grpc.aio in `grpc_transport`, or a faster one) reads `ProcessingRequest` messages
of one stream, hands each to the stream's processor, writes back whatever the processor returns,
and ends the RPC with status OK as soon as the processor is `done` — the meter must end its
observability stream itself (ENVOY-NOTES), and the gate has nothing more to say once it has
answered its last phase. When the peer ends the stream first (or it is cancelled), the transport
calls `close()`.

Role: from the gRPC initial metadata ``x-tokenbook-filter: gate|meter`` that the shipped Envoy
configs set, falling back to the message's ``observability_mode`` flag.

- `GateStream` answers request headers (admit with header mutations and dynamic metadata, or
  an immediate error response). For OpenAI-style chat routes it also asks for the buffered
  request body with ``mode_override`` and answers it (adding ``include_usage``).
- `MeterStream` answers nothing (observability mode: answers are ignored) and feeds a
  `MeterSession`. Its first message is the response headers (the shipped config skips the
  request headers); it ends at once the RPCs of responses it does not book (the gate's
  refusals, routes tokenbook does not know).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeAlias

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from tokenbook.booking import Booker
from tokenbook.envoyconfig.filters import METER_ATTRIBUTES
from tokenbook.extproc import codec
from tokenbook.extproc.wire import Encoded
from tokenbook.gate import Admit, Gate
from tokenbook.meter import MeterSession
from tokenbook.metrics.instruments import Metrics

log = logging.getLogger("tokenbook.extproc")

# What a processor hands its transport to write: a message, or one already serialized.
Answer: TypeAlias = pb.ProcessingResponse | Encoded

ROLE_METADATA_KEY = "x-tokenbook-filter"
_BUFFER_BODY = processing_mode_pb2.ProcessingMode(
    request_header_mode=processing_mode_pb2.ProcessingMode.SEND,
    response_header_mode=processing_mode_pb2.ProcessingMode.SKIP,
    request_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED,
    response_body_mode=processing_mode_pb2.ProcessingMode.NONE,
    request_trailer_mode=processing_mode_pb2.ProcessingMode.SKIP,
    response_trailer_mode=processing_mode_pb2.ProcessingMode.SKIP,
)
# Appended to the serialized headers answer (concatenated messages parse as their merge).
_BUFFER_BODY_OVERRIDE = pb.ProcessingResponse(mode_override=_BUFFER_BODY).SerializeToString()


class StreamProcessor(Protocol):
    done: bool

    async def on_message(self, msg: pb.ProcessingRequest) -> Answer | None:
        """Handle one message; the answer to write, if any."""

    def close(self) -> None:
        """The stream ended (peer closed, cancelled, or we are done)."""


class GateStream:
    def __init__(self, owner: Processors) -> None:
        self._p = owner
        self.done = False
        self._body_use: str | None = None  # the body was asked for, and why
        owner.metrics.tally.add(owner.open_gate)
        self._closed = False

    async def on_message(self, msg: pb.ProcessingRequest) -> Answer | None:
        which = msg.WhichOneof("request")
        if which == "request_headers":
            return await self._headers(msg)
        use = self._body_use
        if which == "request_body" and use is not None:
            return self._body(msg.request_body, use)
        # Only the phases above are subscribed; answer anything else with its own oneof set so a
        # misconfigured filter degrades to pass-through instead of a protocol error (a 500).
        self.done = True
        return empty_answer(which)

    async def _headers(self, msg: pb.ProcessingRequest) -> Answer:
        p = self._p
        headers = codec.headers_of(msg.request_headers)
        attrs = codec.attributes_of(msg)
        provider = p.provider_for_route(attrs.get("xds.route_name", ""))
        req = codec.request_info(headers, attrs, provider)
        try:
            decision = await p.gate.decide(req)
        except Exception:
            p.metrics.extproc_errors.labels(role="gate", kind="exception").inc()
            log.exception("gate failed; Envoy applies its failure_mode_allow")
            raise
        m = p.metrics
        m.tally.add(
            m.child(m.gate_decisions, m.guard("provider", provider or "unknown"), decision.decision)
        )
        if not isinstance(decision, Admit):
            p.booker.book_denied(provider or "unknown", {}, "unknown")
            self.done = True
            return codec.immediate(decision.reply)
        if decision.body_use is not None and not msg.request_headers.end_of_stream:
            self._body_use = decision.body_use
            extra = _BUFFER_BODY_OVERRIDE
        else:
            self.done = True
            extra = b""
        return codec.continue_request_headers(
            decision.set_headers, decision.remove_headers, decision.metadata, extra=extra
        )

    def _body(self, body: pb.HttpBody, use: str) -> Answer:
        self.done = True
        rewrite = self._p.gate.rewrite_body(body.body, use)
        return codec.continue_request_body(rewrite.body, rewrite.request_model)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._p.metrics.tally.add(self._p.open_gate, -1)


class MeterStream:
    def __init__(self, owner: Processors) -> None:
        self._p = owner
        self._session = owner.new_meter_session()
        self.done = False
        self._closed = False
        owner.metrics.tally.add(owner.open_meter)

    async def on_message(self, msg: pb.ProcessingRequest) -> None:
        self.done = self.observe(msg)

    def observe(self, msg: pb.ProcessingRequest) -> bool:
        """Synchronous core (no awaits): True once the response has ended."""
        session = self._session
        which = msg.WhichOneof("request")
        if which == "response_body":
            body = msg.response_body
            return session.on_response_body(body.body, end_of_stream=body.end_of_stream)
        if which == "response_headers":
            if not session.knows_request and not self._begin(msg):
                return True  # nothing to book: end the RPC rather than read the body
            rh = msg.response_headers
            status, headers = codec.response_headers_of(rh)
            session.on_response_headers(status, headers, end_of_stream=rh.end_of_stream)
            return bool(rh.end_of_stream)
        if which == "request_headers":
            attrs = codec.attributes_of(msg)
            provider = self._p.provider_for_route(attrs.get("xds.route_name", ""))
            req = codec.request_info(codec.request_line_of(msg.request_headers), attrs, provider)
            session.on_request_headers(req, codec.metadata_of(msg))
            return False
        if which == "response_trailers":
            session.on_response_body(b"", end_of_stream=True)
            return True
        return False

    def _begin(self, msg: pb.ProcessingRequest) -> bool:
        """Learn the request from the response-headers message; False: nothing to book.

        The shipped meter skips the request-headers phase (one message less per request) and
        asks for the request's route, id, path, method and start time as response attributes
        instead. Configs rendered before that still send request headers, handled above.
        """
        attrs = codec.attributes_of(msg)
        if "xds.route_name" not in attrs:
            if not codec.metadata_of(msg):
                # Nothing from the gate either: a refusal under a config rendered before the
                # meter skipped the request headers (they carry no response attributes).
                return False
            # A meter filter without `response_attributes`: every response would go unbooked.
            self._p.metrics.extproc_errors.labels(role="meter", kind="no_attributes").inc()
            if not self._p.warned_no_attributes:
                self._p.warned_no_attributes = True
                log.warning(
                    "the meter got response headers without the request's attributes; render "
                    "the Envoy config with `tokenbook envoy-config` (response_attributes: %s)",
                    ", ".join(METER_ATTRIBUTES),
                )
            return False
        if attrs.get("response.code_details") == codec.GATE_REFUSED_DETAILS:
            return False  # the gate refused the request and booked the refusal itself
        provider = self._p.provider_for_route(attrs["xds.route_name"])
        if provider is None:
            return False
        metadata = codec.metadata_of(msg)
        self._session.on_request_headers(
            codec.request_info_of_attributes(attrs, metadata, provider),
            metadata,
            started_wall=codec.epoch_seconds(attrs.get("request.time", "")),
        )
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._session.close()
        except Exception:  # booking must never take the transport down
            self._p.metrics.extproc_errors.labels(role="meter", kind="booking").inc()
            log.exception("meter booking failed")
        finally:
            self._p.metrics.tally.add(self._p.open_meter, -1)


class Processors:
    """Makes the processor for a new stream; shared state of every stream."""

    def __init__(
        self,
        *,
        gate: Gate,
        new_meter_session: Callable[[], MeterSession],
        provider_for_route: Callable[[str], str | None],
        booker: Booker,
        metrics: Metrics,
    ) -> None:
        self.gate = gate
        self.new_meter_session = new_meter_session
        self.provider_for_route = provider_for_route
        self.booker = booker
        self.metrics = metrics
        self.warned_no_attributes = False
        self.open_gate = metrics.extproc_open_streams.labels(role="gate")
        self.open_meter = metrics.extproc_open_streams.labels(role="meter")
        self._count_gate = metrics.extproc_streams.labels(role="gate")
        self._count_meter = metrics.extproc_streams.labels(role="meter")

    def new_stream(self, role: str | None, first: pb.ProcessingRequest) -> StreamProcessor:
        if role is None:
            role = "meter" if first.observability_mode else "gate"
        if role == "meter":
            self.metrics.tally.add(self._count_meter)
            return MeterStream(self)
        self.metrics.tally.add(self._count_gate)
        return GateStream(self)


def role_from_metadata(pairs: object) -> str | None:
    """The role named by the ``x-tokenbook-filter`` initial metadata, if any."""
    for key, value in pairs or ():  # type: ignore[attr-defined]
        if key == ROLE_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            return text if text in ("gate", "meter") else None
    return None


def empty_answer(which: str | None) -> pb.ProcessingResponse:
    if which == "request_body":
        return pb.ProcessingResponse(request_body=pb.BodyResponse())
    if which == "response_headers":
        return pb.ProcessingResponse(response_headers=pb.HeadersResponse())
    if which == "response_body":
        return pb.ProcessingResponse(response_body=pb.BodyResponse())
    if which == "request_trailers":
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    if which == "response_trailers":
        return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
    return codec.pass_request_headers()
