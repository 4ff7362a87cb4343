"""`codec.continue_request_headers` and `continue_request_body` answer in wire form, from cached
parts (`tokenbook.extproc.wire`): every answer must parse to the message protobuf builds."""

from __future__ import annotations

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2, wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbook.extproc import codec, wire
from tokenbook.requestinfo import METADATA_NAMESPACE

_names = st.sampled_from(["x-tokenbook-key-id", "x-tokenbook-owner", ":path", "authorization"])
# Short values, and long ones whose lengths take two- and three-byte varints.
_values = st.text(min_size=0, max_size=12) | st.text(min_size=120, max_size=300)
_meta_keys = st.sampled_from(
    ["key_id", "owner", "team", "provider", "request_id", "admitted_at", "admission_id", "path"]
)


@settings(max_examples=300, deadline=None)
@given(
    set_headers=st.lists(st.tuples(_names, _values), max_size=4),
    remove=st.lists(st.sampled_from(["x-api-key", "x-tokenbook-team", "cookie"]), max_size=3),
    metadata=st.dictionaries(_meta_keys, _values, max_size=7),
    again=st.dictionaries(st.sampled_from(["request_id", "admitted_at", "path"]), _values),
)
def test_template_answers_equal_fresh_ones(
    set_headers: list[tuple[str, str]],
    remove: list[str],
    metadata: dict[str, str],
    again: dict[str, str],
) -> None:
    for meta in (metadata, {**metadata, **again}):  # the second call is a cache hit
        got = codec.continue_request_headers(set_headers, remove, meta).message()
        want = codec._build_continue(set_headers, remove, meta)
        assert got == want
        assert got.WhichOneof("response") == "request_headers"


def test_per_request_values_do_not_leak_between_requests() -> None:
    sets = [("x-tokenbook-owner", "alice")]
    first = codec.continue_request_headers(sets, [], {"owner": "alice", "request_id": "r1"})
    second = codec.continue_request_headers(sets, [], {"owner": "alice", "request_id": "r2"})
    third = codec.continue_request_headers(sets, [], {"owner": "alice"})
    first, second, third = (a.message() for a in (first, second, third))
    ns = METADATA_NAMESPACE
    assert first.dynamic_metadata.fields[ns].struct_value.fields["request_id"].string_value == "r1"
    assert second.dynamic_metadata.fields[ns].struct_value.fields["request_id"].string_value == "r2"
    assert "request_id" not in third.dynamic_metadata.fields[ns].struct_value.fields


@settings(max_examples=300, deadline=None)
@given(n=st.integers(min_value=0, max_value=2**40))
def test_varint_is_protobufs(n: int) -> None:
    # A Struct holding one string of n bytes would be too big past a few MB: compare with the
    # varint protobuf writes for an int64 field instead (field 1, wire type 0).
    assert wrappers_pb2.Int64Value(value=n).SerializeToString() == (
        b"\x08" + wire.varint(n) if n else b""
    )


@settings(max_examples=200, deadline=None)
@given(
    entries=st.dictionaries(st.text(max_size=20), _values, max_size=6),
    namespace=st.sampled_from([METADATA_NAMESPACE, "x" * 200]),
)
def test_dynamic_metadata_is_protobufs(entries: dict[str, str], namespace: str) -> None:
    got = pb.ProcessingResponse.FromString(
        wire.dynamic_metadata(namespace, [wire.string_entry(k, v) for k, v in entries.items()])
    )
    want = pb.ProcessingResponse()
    ns = want.dynamic_metadata.fields[namespace].struct_value
    ns.SetInParent()
    for k, v in entries.items():
        ns.fields[k].string_value = v
    assert got == want


def test_a_long_value_takes_a_three_byte_length() -> None:
    value = "é" * 20_000  # 40,000 bytes
    answer = codec.continue_request_headers([], [], {"path": value, "owner": "alice"})
    fields = answer.message().dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
    assert fields["path"].string_value == value
    assert fields["owner"].string_value == "alice"


def test_the_appended_mode_override_survives_the_merge() -> None:
    mode = processing_mode_pb2.ProcessingMode(
        request_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED
    )
    extra = pb.ProcessingResponse(mode_override=mode).SerializeToString()
    answer = codec.continue_request_headers(
        [("x-tokenbook-owner", "alice")], ["x-api-key"], {"owner": "alice"}, extra=extra
    ).message()
    assert answer.mode_override == mode
    assert answer.WhichOneof("response") == "request_headers"
    mutation = answer.request_headers.response.header_mutation
    assert [h.header.key for h in mutation.set_headers] == ["x-tokenbook-owner"]
    assert list(mutation.remove_headers) == ["x-api-key"]
    assert (
        answer.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields["owner"].string_value
        == "alice"
    )


@settings(max_examples=100, deadline=None)
@given(
    body=st.none() | st.binary(max_size=300),
    model=st.none() | st.text(max_size=40),
)
def test_body_answers_equal_fresh_ones(body: bytes | None, model: str | None) -> None:
    want = pb.ProcessingResponse(request_body=pb.BodyResponse(response=pb.CommonResponse()))
    if body is not None:
        common = want.request_body.response
        common.body_mutation.body = body
        header = common.header_mutation.set_headers.add()
        header.header.key = "content-length"
        header.header.raw_value = str(len(body)).encode()
        header.append_action = codec.OVERWRITE
    if model:
        ns = want.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value
        ns.fields["request_model"].string_value = model
    got = codec.continue_request_body(body, model).message()
    assert got == want
    assert got.WhichOneof("response") == "request_body"


def test_an_empty_struct_value_parses() -> None:
    # The smallest namespace: no entries at all (never sent, but the encoder must not break).
    got = pb.ProcessingResponse.FromString(wire.dynamic_metadata("ns", []))
    assert got.dynamic_metadata.fields["ns"].struct_value == struct_pb2.Struct()
