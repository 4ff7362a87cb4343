"""`codec.response_headers_of`: the status, and only the response headers adapters read."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from tokenbook.extproc import codec


def _headers(pairs: list[tuple[str, str]], *, as_value: bool = False) -> pb.HttpHeaders:
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=k, value=v)
                if as_value
                else base_pb2.HeaderValue(key=k, raw_value=v.encode())
                for k, v in pairs
            ]
        )
    )


OPENAI_LIKE = [
    (":status", "200"),
    ("date", "Fri, 04 Dec 2026 02:00:00 GMT"),
    ("content-type", "text/event-stream; charset=utf-8"),
    ("transfer-encoding", "chunked"),
    ("openai-organization", "org-x"),
    ("openai-processing-ms", "231"),
    ("x-ratelimit-remaining-tokens", "149999"),
    ("x-request-id", "req_1"),
    ("set-cookie", "__cf_bm=abc; path=/"),
    ("content-encoding", "gzip"),
    ("cf-ray", "8f0-LAX"),
]


def test_status_and_only_the_used_headers() -> None:
    status, headers = codec.response_headers_of(_headers(OPENAI_LIKE))
    assert status == 200
    assert headers == [
        ("content-type", "text/event-stream; charset=utf-8"),
        ("content-encoding", "gzip"),
    ]


def test_bedrock_token_count_headers_are_kept() -> None:
    pairs = [
        (":status", "200"),
        ("x-amzn-requestid", "r"),
        ("x-amzn-bedrock-input-token-count", "12"),
        ("x-amzn-bedrock-output-token-count", "34"),
    ]
    status, headers = codec.response_headers_of(_headers(pairs))
    assert status == 200
    assert dict(headers) == {
        "x-amzn-bedrock-input-token-count": "12",
        "x-amzn-bedrock-output-token-count": "34",
    }


def test_values_in_the_value_field_and_odd_statuses() -> None:
    # Envoy sends raw_value; `value` is read when raw_value is empty.
    status, headers = codec.response_headers_of(
        _headers([(":status", "429"), ("content-type", "application/json")], as_value=True)
    )
    assert (status, headers) == (429, [("content-type", "application/json")])
    assert codec.response_headers_of(_headers([(":status", "2x0")]))[0] == 0
    assert codec.response_headers_of(_headers([]))[0] == 0
