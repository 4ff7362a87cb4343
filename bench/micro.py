"""Micro-benchmarks behind docs/performance.md's smaller figures (best of 5 timeit repeats).

    .venv/bin/python bench/micro.py

- the gate's answer to request headers, as `codec.continue_request_headers` builds it (wire
  form, `extproc/wire.py`) and as protobuf builds the same message, each with serialization;
- parsing a meter's response-body message without the gate's metadata, with it (what Envoy
  forwards on every message), and with the same values packed into one field;
- reading ten request headers (`codec.headers_of`).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from tokenbook.extproc import codec
from tokenbook.requestinfo import METADATA_NAMESPACE

SET_HEADERS = (
    ("x-tokenbook-key-id", "k3fz6b2m7qaw"),
    ("x-tokenbook-owner", "alice"),
    ("x-tokenbook-team", "research"),
    ("x-tokenbook-agent", "summariser"),
    ("x-tokenbook-workload", "nightly"),
)
REMOVE = ("authorization",)
METADATA = {
    "key_id": "k3fz6b2m7qaw",
    "owner": "alice",
    "team": "research",
    "agent": "summariser",
    "workload": "nightly",
    "provider": "openai",
    "request_id": "0f0e9a8c-1d2e-4f5a-9b8c-7d6e5f4a3b2c",
    "admitted_at": "1764812345.123456",
    "path": "/openai/v1/chat/completions",
    "admission_id": "a1b2c3d4e5f6",
}
CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" hello"}}]}\n\n'
)
HEADERS = [
    (":authority", "127.0.0.1:10000"),
    (":path", "/openai/v1/chat/completions"),
    (":method", "POST"),
    (":scheme", "http"),
    ("authorization", "Bearer tb_k3fz6b2m7qaw_c2VjcmV0c2VjcmV0c2VjcmV0"),
    ("content-type", "application/json"),
    ("content-length", "112"),
    ("user-agent", "wrk"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "0f0e9a8c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"),
]


def best_us(fn: Callable[[], object], number: int = 20_000) -> float:
    fn()
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def body_message(metadata: dict[str, str] | None) -> bytes:
    meta = base_pb2.Metadata()
    if metadata is not None:
        ns = struct_pb2.Struct()
        ns.update(metadata)
        meta.filter_metadata[METADATA_NAMESPACE].CopyFrom(ns)
    return pb.ProcessingRequest(
        response_body=pb.HttpBody(body=CHUNK), observability_mode=True, metadata_context=meta
    ).SerializeToString()


def main() -> int:
    rows: list[tuple[str, float]] = [
        (
            "gate answer, wire form (codec.continue_request_headers), serialized",
            best_us(
                lambda: codec.continue_request_headers(
                    SET_HEADERS, REMOVE, METADATA
                ).SerializeToString()
            ),
        ),
        (
            "gate answer built as a protobuf message, serialized",
            best_us(
                lambda: codec._build_continue(SET_HEADERS, REMOVE, METADATA).SerializeToString()
            ),
        ),
    ]
    packed = "\x1f".join(f"{k}={v}" for k, v in METADATA.items())
    for label, raw in (
        ("parse a response-body message, no metadata", body_message(None)),
        ("parse a response-body message, the gate's metadata", body_message(METADATA)),
        ("parse a response-body message, the metadata in one field", body_message({"m": packed})),
    ):
        rows.append(
            (
                f"{label} ({len(raw)} B)",
                best_us(lambda raw=raw: pb.ProcessingRequest.FromString(raw)),
            )
        )
    headers = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in HEADERS]
    )
    message = pb.HttpHeaders(headers=headers)
    rows.append(
        ("read ten request headers (codec.headers_of)", best_us(lambda: codec.headers_of(message)))
    )
    width = max(len(label) for label, _ in rows)
    for label, us in rows:
        print(f"{label:<{width}}  {us:6.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
