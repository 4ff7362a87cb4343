"""Translation between Envoy's ext_proc protobuf messages and tokenbook's plain values.

This package is the only one that touches Envoy types (STYLE.md, rule 1). Everything returned
from here is a str / bytes / tuple / dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from tokenbook.providers import ErrorReply
from tokenbook.requestinfo import METADATA_NAMESPACE, RequestInfo

EXT_PROC_ATTRIBUTES = "envoy.filters.http.ext_proc"
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def headers_of(msg: pb.HttpHeaders) -> list[tuple[str, str]]:
    """Header pairs; Envoy sends values in `raw_value` (bytes), names already lower-case."""
    out: list[tuple[str, str]] = []
    for h in msg.headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        out.append((h.key, value))
    return out


def attributes_of(req: pb.ProcessingRequest) -> dict[str, str]:
    """The requested attributes (``xds.route_name``, ``request.id``) as strings."""
    if EXT_PROC_ATTRIBUTES not in req.attributes:
        return {}
    fields = req.attributes[EXT_PROC_ATTRIBUTES].fields
    return {name: _value_str(v) for name, v in fields.items()}


def metadata_of(req: pb.ProcessingRequest) -> dict[str, str]:
    """The gate's attribution, forwarded by Envoy in the ``tokenbook`` namespace."""
    fm = req.metadata_context.filter_metadata
    if METADATA_NAMESPACE not in fm:
        return {}
    return {name: _value_str(v) for name, v in fm[METADATA_NAMESPACE].fields.items()}


def _value_str(v: struct_pb2.Value) -> str:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        num = v.number_value
        return str(int(num)) if num.is_integer() else str(num)
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    return ""


def request_info(
    headers: Sequence[tuple[str, str]],
    attributes: Mapping[str, str],
    provider: str | None,
) -> RequestInfo:
    path = method = ""
    request_id = attributes.get("request.id", "")
    for k, v in headers:
        if k == ":path":
            path = v
        elif k == ":method":
            method = v
        elif k == "x-request-id" and not request_id:
            request_id = v
    return RequestInfo(
        route_name=attributes.get("xds.route_name", ""),
        provider=provider,
        method=method,
        raw_path=path,
        request_id=request_id,
        headers=tuple(headers),
    )


def _header_option(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode("utf-8")),
        append_action=OVERWRITE,
    )


def continue_request_headers(
    set_headers: Sequence[tuple[str, str]],
    remove_headers: Sequence[str],
    metadata: Mapping[str, str],
) -> pb.ProcessingResponse:
    """Let the request go on, with header mutations and dynamic metadata for the meter."""
    # Built in place (`add`, `extend`) rather than from nested constructors and copied
    # sub-messages: half the cost per admitted request (measured 52 -> 30 µs).
    resp = pb.ProcessingResponse()
    mutation = resp.request_headers.response.header_mutation
    mutation.SetInParent()  # the oneof must be set even with no mutation (else a 500)
    add = mutation.set_headers.add
    for k, v in set_headers:
        add(
            header=base_pb2.HeaderValue(key=k, raw_value=v.encode("utf-8")), append_action=OVERWRITE
        )
    mutation.remove_headers.extend(remove_headers)
    if metadata:
        ns = resp.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value
        for k, v in metadata.items():
            ns.fields[k].string_value = v
    return resp


def pass_request_headers() -> pb.ProcessingResponse:
    """An empty answer with its oneof set (an unset oneof is a protocol error: 500)."""
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse())


def immediate(reply: ErrorReply) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=reply.status),
            headers=pb.HeaderMutation(set_headers=[_header_option(k, v) for k, v in reply.headers]),
            body=reply.body,
            details="tokenbook_gate_refused",
        )
    )
