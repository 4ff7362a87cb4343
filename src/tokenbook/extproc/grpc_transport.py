"""The reference ext_proc transport: grpc.aio's `Process` stream-stream method.

Each gRPC stream gets its processor from `Processors.new_stream`; this class only moves messages.
The RPC ends with status OK when the processor is done (we end it; Envoy does not have to) or
when Envoy half-closes. A stream Envoy cancels (client gone) is closed the same way, so the
meter books it as aborted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from tokenbook.extproc.streams import Processors, role_from_metadata

log = logging.getLogger("tokenbook.extproc")


class GrpcExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, processors: Processors) -> None:
        self._processors = processors

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: Any,  # grpc.aio.ServicerContext; grpcio ships no type information
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        stream = self._processors.new_stream(
            role_from_metadata(context.invocation_metadata()), first
        )
        msg: Any = first
        try:
            while msg is not grpc.aio.EOF:
                answer = await stream.on_message(msg)
                if answer is not None:
                    await context.write(answer)
                if stream.done:
                    return
                msg = await context.read()
        finally:
            stream.close()
