"""Micro-benchmarks behind docs/performance.md's smaller figures (best of 5 timeit repeats).

    .venv/bin/python bench/micro.py

- the gate's answer to request headers, as `codec.continue_request_headers` builds it (wire
  form, `extproc/wire.py`) and as protobuf builds the same message, each with serialization;
- parsing a meter's response-body message without the gate's metadata, with it (what Envoy
  forwards on every message), and with the same values packed into one field;
- reading ten request headers (`codec.headers_of`);
- reading a provider's response headers (22, as OpenAI sends them): all of them, and only the
  ones the usage adapters use (`codec.response_headers_of`, what the meter does).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2
from processor_bench import header_map, request_headers

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
# What OpenAI's API answers a streamed chat request with (names as documented / commonly seen).
RESPONSE_HEADERS = [
    (":status", "200"),
    ("date", "Fri, 04 Dec 2026 02:00:00 GMT"),
    ("content-type", "text/event-stream; charset=utf-8"),
    ("transfer-encoding", "chunked"),
    ("connection", "keep-alive"),
    ("access-control-expose-headers", "X-Request-ID"),
    ("openai-organization", "org-abcdefghijklmnopqrstuvwx"),
    ("openai-processing-ms", "231"),
    ("openai-project", "proj_abcdefghijklmnopqrstuvwx"),
    ("openai-version", "2020-10-01"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-limit-tokens", "30000000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-remaining-tokens", "29999990"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-reset-tokens", "0s"),
    ("x-request-id", "req_0123456789abcdef0123456789abcdef"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("cf-cache-status", "DYNAMIC"),
    ("set-cookie", "__cf_bm=abcdefghijklmnopqrstuvwxyz; path=/; HttpOnly; Secure"),
    ("x-content-type-options", "nosniff"),
    ("server", "cloudflare"),
    ("cf-ray", "8f0a1b2c3d4e5f60-LAX"),
]
CHUNK = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" hello"}}]}\n\n'
)


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
    # What Envoy sends the gate for the bench's requests (`processor_bench.request_headers`).
    message = pb.HttpHeaders(
        headers=header_map(
            request_headers("tb_k3fz6b2m7qaw_c2VjcmV0c2VjcmV0c2VjcmV0", METADATA["request_id"])
        )
    )
    rows.append(
        ("read ten request headers (codec.headers_of)", best_us(lambda: codec.headers_of(message)))
    )
    response = pb.HttpHeaders(headers=header_map(RESPONSE_HEADERS))
    n = len(RESPONSE_HEADERS)
    rows.append(
        (
            f"read {n} response headers, all (headers_of)",
            best_us(lambda: codec.headers_of(response)),
        )
    )
    rows.append(
        (
            f"read {n} response headers, those adapters use (response_headers_of)",
            best_us(lambda: codec.response_headers_of(response)),
        )
    )
    width = max(len(label) for label, _ in rows)
    for label, us in rows:
        print(f"{label:<{width}}  {us:6.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
