"""A no-op ext_proc processor: tokenbook's transport and phases, none of its work.

The bench's yardstick. It subscribes to nothing itself (Envoy's config decides the phases, and
the bench gives it the very config tokenbook gets), and answers like tokenbook does, minus the
work:

- gate (``x-tokenbook-filter: gate``): request headers answered with an empty mutation. Where
  tokenbook's gate asks for the buffered request body (OpenAI-style chat routes, to add
  ``include_usage``: `tokenbook.request_body.wants_body`), this one asks too, with the same
  ``mode_override``, and answers the body with an empty mutation: the same messages on the wire.
- meter (``x-tokenbook-filter: meter``, observability mode): reads every message and ends the
  RPC right after the end of stream (ENVOY-NOTES: otherwise Envoy holds the stream for
  ``deferred_close_timeout`` and its circuit breaker overflows).

Transports, named as `tokenbook serve --transport` names them: ``grpcio`` is a plain grpc.aio
servicer written here (the same server options as ``tokenbook serve``); ``h2`` runs these no-op
processors on tokenbook's own HTTP/2 transport (`tokenbook.extproc.h2_transport.H2Server`),
which calls a meter's synchronous ``observe`` directly, as it does tokenbook's.

    python bench/noop_extproc.py --listen 127.0.0.1:50061 [--transport grpcio|h2] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tokenbook.request_body import DEFAULT_INCLUDE_USAGE_PROVIDERS, wants_body

_ATTRS = "envoy.filters.http.ext_proc"
_BUFFER_BODY = pm.ProcessingMode(
    request_header_mode=pm.ProcessingMode.SEND,
    response_header_mode=pm.ProcessingMode.SKIP,
    request_body_mode=pm.ProcessingMode.BUFFERED,
    response_body_mode=pm.ProcessingMode.NONE,
    request_trailer_mode=pm.ProcessingMode.SKIP,
    response_trailer_mode=pm.ProcessingMode.SKIP,
)
_EMPTY = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "response_body": pb.ProcessingResponse(response_body=pb.BodyResponse()),
    "request_trailers": pb.ProcessingResponse(request_trailers=pb.TrailersResponse()),
    "response_trailers": pb.ProcessingResponse(response_trailers=pb.TrailersResponse()),
}


# Diagnostics (bench/gate_body_phase.py): TOKENBOOK_NOOP_NO_BODY=1 skips the buffered-body
# phase (what it costs in latency); TOKENBOOK_NOOP_BODY_SENT=1 expects Envoy to send the body
# unasked (a statically BUFFERED body) and answers it without a mode_override.
_ASK_BODY = os.environ.get("TOKENBOOK_NOOP_NO_BODY", "") != "1"
_BODY_SENT = os.environ.get("TOKENBOOK_NOOP_BODY_SENT", "") == "1"


def _gate_wants_body(msg: pb.ProcessingRequest) -> bool:
    """tokenbook's rule for asking for the request body, on the same inputs."""
    if msg.request_headers.end_of_stream:
        return False
    route = ""
    if _ATTRS in msg.attributes:
        value = msg.attributes[_ATTRS].fields.get("xds.route_name")
        route = value.string_value if value is not None else ""
    method = path = ""
    length: str | None = None
    for h in msg.request_headers.headers.headers:
        if h.key == ":method":
            method = h.raw_value.decode()
        elif h.key == ":path":
            path = h.raw_value.decode()
        elif h.key == "content-length":
            length = h.raw_value.decode()
    provider_path = path.split("?", 1)[0].removeprefix(f"/{route}")
    return wants_body(route, method, provider_path, length, DEFAULT_INCLUDE_USAGE_PROVIDERS)


class NoopGate:
    """Request headers (and the buffered body where tokenbook asks for it)."""

    def __init__(self) -> None:
        self.done = False
        self._awaiting_body = False

    async def on_message(self, msg: pb.ProcessingRequest) -> pb.ProcessingResponse | None:
        which = msg.WhichOneof("request")
        if which == "request_headers" and _ASK_BODY and _gate_wants_body(msg):
            resp = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            if _BODY_SENT:
                self._awaiting_body = True  # on its way already: answer it when it comes
                return resp
            resp.mode_override.CopyFrom(_BUFFER_BODY)
            self._awaiting_body = True
            return resp
        self.done = True
        return _EMPTY.get(which or "request_headers", _EMPTY["request_headers"])

    def close(self) -> None:
        pass


class NoopMeter:
    """Observability mode: answers are ignored, so none are sent; done at the end of stream."""

    def __init__(self) -> None:
        self.done = False

    async def on_message(self, msg: pb.ProcessingRequest) -> None:
        self.done = self.observe(msg)

    def observe(self, msg: pb.ProcessingRequest) -> bool:
        """Synchronous, like tokenbook's `MeterStream.observe` (the h2 transport calls it)."""
        which = msg.WhichOneof("request")
        if which == "response_body":
            return bool(msg.response_body.end_of_stream)
        if which == "response_headers":
            return bool(msg.response_headers.end_of_stream)
        return bool(which == "response_trailers")

    def close(self) -> None:
        pass


class NoopProcessors:
    """Duck-types `tokenbook.extproc.streams.Processors.new_stream` for tokenbook's transports."""

    def new_stream(self, role: str | None, first: pb.ProcessingRequest) -> NoopGate | NoopMeter:
        if role is None:
            role = "meter" if first.observability_mode else "gate"
        return NoopMeter() if role == "meter" else NoopGate()


def _role(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "x-tokenbook-filter":
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class NoopServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """grpc.aio, read/write style (no async generator per stream), like tokenbook's transport."""

    def __init__(self) -> None:
        self._processors = NoopProcessors()

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        msg: Any = await context.read()
        if msg is grpc.aio.EOF:
            return
        stream = self._processors.new_stream(_role(context.invocation_metadata()), msg)
        while msg is not grpc.aio.EOF:
            answer = await stream.on_message(msg)
            if answer is not None:
                await context.write(answer)
            if stream.done:
                return
            msg = await context.read()


async def serve_grpc(listen: str, stop: asyncio.Event) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_concurrent_streams", 100_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            ("grpc.max_send_message_length", 32 * 1024 * 1024),
        ]
    )
    pb_grpc.add_ExternalProcessorServicer_to_server(NoopServicer(), server)
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await status.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"noop ext_proc (grpc) on {listen}", flush=True)
    await stop.wait()
    await server.stop(1)


async def serve_h2(listen: str, stop: asyncio.Event) -> None:
    """The no-op processors on tokenbook's own HTTP/2 transport."""
    from tokenbook.extproc.h2_transport import H2Server

    server = H2Server(listen, NoopProcessors())
    await server.start()
    print(f"noop ext_proc (h2) on {listen}", flush=True)
    await stop.wait()
    await server.stop(1)


async def amain(ns: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ns.transport == "h2":
        await serve_h2(ns.listen, stop)
    else:
        await serve_grpc(ns.listen, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="no-op ext_proc processor for the bench")
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--transport", choices=["grpcio", "grpc", "h2"], default="grpcio")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    ns = p.parse_args(argv)
    if ns.uvloop:
        import uvloop

        uvloop.run(amain(ns))
    else:
        asyncio.run(amain(ns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
