"""`codec.continue_request_headers` answers from a cached template: it must equal a fresh build."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbook.extproc import codec
from tokenbook.requestinfo import METADATA_NAMESPACE

_names = st.sampled_from(["x-tokenbook-key-id", "x-tokenbook-owner", ":path", "authorization"])
_values = st.text(min_size=0, max_size=12)
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
        got = codec.continue_request_headers(set_headers, remove, meta)
        want = codec._build_continue(set_headers, remove, meta)
        assert got == want
        assert got.WhichOneof("response") == "request_headers"


def test_per_request_values_do_not_leak_between_requests() -> None:
    sets = [("x-tokenbook-owner", "alice")]
    first = codec.continue_request_headers(sets, [], {"owner": "alice", "request_id": "r1"})
    second = codec.continue_request_headers(sets, [], {"owner": "alice", "request_id": "r2"})
    third = codec.continue_request_headers(sets, [], {"owner": "alice"})
    ns = METADATA_NAMESPACE
    assert first.dynamic_metadata.fields[ns].struct_value.fields["request_id"].string_value == "r1"
    assert second.dynamic_metadata.fields[ns].struct_value.fields["request_id"].string_value == "r2"
    assert "request_id" not in third.dynamic_metadata.fields[ns].struct_value.fields
