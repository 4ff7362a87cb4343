"""The grpc.aio server: ext_proc, the standard gRPC health service, and the admin API."""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tokenbook.extproc.admin import KeyRegistryService
from tokenbook.extproc.grpc_transport import GrpcExternalProcessor
from tokenbook.extproc.streams import Processors

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
ADMIN_SERVICE = "tokenbook.v1.KeyRegistry"


async def set_health(
    servicer: health.aio.HealthServicer, serving: bool, *, admin_enabled: bool
) -> None:
    """Every service tokenbook serves reports the same status (both transports use this)."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    services = ["", EXT_PROC_SERVICE] + ([ADMIN_SERVICE] if admin_enabled else [])
    for name in services:
        await servicer.set(name, status)


TRANSPORTS = ("grpcio", "h2")


class ExtProcServer(Protocol):
    """What the app drives; `GrpcServer` and `h2_transport.H2Server` both are one."""

    port: int
    admin_enabled: bool

    async def start(self) -> None: ...
    async def set_serving(self, serving: bool) -> None: ...
    async def stop(self, grace_s: float) -> None: ...
    async def wait(self) -> None: ...


def make_server(
    transport: str, listen: str, processors: Processors, admin: KeyRegistryService | None
) -> ExtProcServer:
    """`h2` (tokenbook's own HTTP/2 transport, the default: ~6x less CPU per stream, see
    bench/transport_bench.py) or `grpcio` (grpc.aio, the reference implementation)."""
    if transport == "h2":
        from tokenbook.extproc.h2_transport import H2Server

        return H2Server(listen, processors, admin)
    return GrpcServer(listen, processors, admin)


def _serialize(answer: Any) -> bytes:
    # A message, or an answer the processor already serialized (`wire.Encoded`): the generated
    # serializer (`ProcessingResponse.SerializeToString`, unbound) accepts only messages.
    data: bytes = answer.SerializeToString()
    return data


def add_ext_proc_to_server(servicer: GrpcExternalProcessor, server: Any) -> None:
    """What the generated ``add_ExternalProcessorServicer_to_server`` does, with `_serialize`."""
    handlers = {
        "Process": grpc.stream_stream_rpc_method_handler(
            servicer.Process,
            request_deserializer=pb.ProcessingRequest.FromString,
            response_serializer=_serialize,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(EXT_PROC_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(EXT_PROC_SERVICE, handlers)


class GrpcServer:
    """Owns the grpc.aio server and its health status; the app drives its lifecycle."""

    def __init__(
        self,
        listen: str,
        processors: Processors,
        admin: KeyRegistryService | None,
    ) -> None:
        # Envoy multiplexes every ext_proc stream over a few HTTP/2 connections: allow many
        # concurrent streams, and keepalive pings from Envoy.
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_concurrent_streams", 100_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.so_reuseport", 0),
                # buffered request bodies (include_usage rewrite) can exceed the 4 MiB default
                ("grpc.max_receive_message_length", 32 * 1024 * 1024),
                ("grpc.max_send_message_length", 32 * 1024 * 1024),
            ]
        )
        add_ext_proc_to_server(GrpcExternalProcessor(processors), self._server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.admin_enabled = admin is not None
        if admin is not None:
            from tokenbook.v1 import registry_pb2_grpc

            registry_pb2_grpc.add_KeyRegistryServicer_to_server(admin, self._server)
        self.port = self._server.add_insecure_port(listen)
        if self.port == 0 and not listen.startswith("unix:"):
            raise OSError(f"cannot listen on {listen}")

    async def start(self) -> None:
        await self._server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        await set_health(self.health, serving, admin_enabled=self.admin_enabled)

    async def stop(self, grace_s: float) -> None:
        """Refuse new streams, let open ones finish for up to `grace_s`, then cancel the rest."""
        await self.set_serving(False)
        await self._server.stop(grace_s)

    async def wait(self) -> None:
        await self._server.wait_for_termination()
