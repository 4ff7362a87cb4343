"""The ext_proc `Process` stream on grpc.aio: one processor per gRPC stream.

Envoy opens one stream per HTTP request and filter. The filter's role comes from the gRPC
initial metadata ``x-tokenbook-filter: gate|meter`` that the shipped Envoy configs set (falling
back to the message's ``observability_mode`` flag), so both filters can share one cluster.

- gate: answers the request-headers message (admit with mutations, or an immediate error
  response), then ends the RPC: it subscribes to nothing else, so holding the stream open would
  only cost Envoy and us a stream slot until the response ends.
- meter: observability mode, so Envoy ignores answers and none are sent. It reads request
  headers, response headers and body chunks, and ends the RPC itself right after the
  end-of-stream message (ENVOY-NOTES: otherwise Envoy holds the stream for
  ``deferred_close_timeout`` and the cluster's circuit breaker overflows).

Failure policy: an exception inside the gate is answered with a pass-through only when the
operator chose it (`gate_fail_open`); by default the stream is failed and Envoy's
``failure_mode_allow: false`` refuses the request. The meter never affects the request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from tokenbook.booking import Booker
from tokenbook.extproc import codec
from tokenbook.gate import Admit, Gate
from tokenbook.meter import MeterSession
from tokenbook.metrics.instruments import Metrics

log = logging.getLogger("tokenbook.extproc")

ROLE_METADATA_KEY = "x-tokenbook-filter"


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        gate: Gate,
        new_meter_session: Callable[[], MeterSession],
        provider_for_route: Callable[[str], str | None],
        booker: Booker,
        metrics: Metrics,
    ) -> None:
        self._gate = gate
        self._new_meter = new_meter_session
        self._provider_for_route = provider_for_route
        self._booker = booker
        self._m = metrics
        self._open_gate = metrics.extproc_open_streams.labels(role="gate")
        self._open_meter = metrics.extproc_open_streams.labels(role="meter")
        self._count_gate = metrics.extproc_streams.labels(role="gate")
        self._count_meter = metrics.extproc_streams.labels(role="meter")

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        role = _role(context)
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if role is None:
            role = "meter" if first.observability_mode else "gate"
        if role == "gate":
            await self._gate_stream(first, context)
        else:
            await self._meter_stream(first, context)

    async def _gate_stream(
        self, first: pb.ProcessingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self._count_gate.inc()
        self._open_gate.inc()
        try:
            which = first.WhichOneof("request")
            if which != "request_headers":
                # Only request headers are subscribed; answer anything else with its own oneof
                # so a misconfigured filter degrades to pass-through instead of a 500.
                await context.write(_empty_answer(which))
                return
            headers = codec.headers_of(first.request_headers)
            attrs = codec.attributes_of(first)
            provider = self._provider_for_route(attrs.get("xds.route_name", ""))
            req = codec.request_info(headers, attrs, provider)
            decision = await self._gate.decide(req)
            self._m.gate_decisions.labels(
                provider=self._m.guard("provider", provider or "unknown"),
                decision=decision.decision,
            ).inc()
            if isinstance(decision, Admit):
                await context.write(
                    codec.continue_request_headers(
                        decision.set_headers, decision.remove_headers, decision.metadata
                    )
                )
            else:
                self._booker.book_denied(provider or "unknown", {}, "unknown")
                await context.write(codec.immediate(decision.reply))
        except Exception:
            self._m.extproc_errors.labels(role="gate", kind="exception").inc()
            log.exception("gate failed; Envoy applies its failure_mode_allow")
            raise
        finally:
            self._open_gate.dec()

    async def _meter_stream(
        self, first: pb.ProcessingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self._count_meter.inc()
        self._open_meter.inc()
        session = self._new_meter()
        msg: pb.ProcessingRequest | Any = first
        try:
            while msg is not grpc.aio.EOF:
                if self._meter_message(session, msg):
                    return  # end of stream seen: end the RPC ourselves
                msg = await context.read()
        except Exception:
            # Envoy cancels the stream when the client goes away: the booking below records it.
            self._m.extproc_errors.labels(role="meter", kind="stream").inc()
            log.debug("meter stream ended early", exc_info=True)
        finally:
            session.close()
            self._open_meter.dec()

    def _meter_message(self, session: MeterSession, msg: pb.ProcessingRequest) -> bool:
        """Handle one observed message; True once the response has ended."""
        which = msg.WhichOneof("request")
        if which == "response_body":
            body = msg.response_body
            session.on_response_body(body.body, end_of_stream=body.end_of_stream)
            return bool(body.end_of_stream)
        if which == "response_headers":
            rh = msg.response_headers
            headers = codec.headers_of(rh)
            status = 0
            for k, v in headers:
                if k == ":status":
                    status = int(v) if v.isdigit() else 0
                    break
            session.on_response_headers(status, headers, end_of_stream=rh.end_of_stream)
            return bool(rh.end_of_stream)
        if which == "request_headers":
            attrs = codec.attributes_of(msg)
            provider = self._provider_for_route(attrs.get("xds.route_name", ""))
            req = codec.request_info(codec.headers_of(msg.request_headers), attrs, provider)
            session.on_request_headers(req, codec.metadata_of(msg))
            return False
        if which == "response_trailers":
            session.on_response_body(b"", end_of_stream=True)
            return True
        return False


def _role(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == ROLE_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            return text if text in ("gate", "meter") else None
    return None


def _empty_answer(which: str | None) -> pb.ProcessingResponse:
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
