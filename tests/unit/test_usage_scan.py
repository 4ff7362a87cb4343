"""The byte scans that stand in for JSON parses on the hot path."""

from __future__ import annotations

import json

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tokenbook.usage.scan import first_string_value, has_object_value, string_value_bytes

TEXT = (b'"text"',)


def test_only_keys_count_not_values() -> None:
    # "text" as a value ("type":"text") is not a key; its neighbour "text": is.
    data = b'{"type":"text","text":"hello"}'
    assert string_value_bytes(data, TEXT) == 5


def test_quotes_inside_text_cannot_fake_a_key() -> None:
    data = orjson.dumps({"text": 'she said "text":"boo"'})
    assert string_value_bytes(data, TEXT) == len('she said "text":"boo"')


def test_whitespace_null_and_non_string_values() -> None:
    assert string_value_bytes(b'{"text" :  "ab", "x": {"text": null}}', TEXT) == 2
    assert string_value_bytes(b'{"text": {"value": "abc"}}', TEXT) == 0
    assert string_value_bytes(b'{"text": "unterminated', TEXT) == 0


def test_escapes_count_as_the_characters_they_stand_for() -> None:
    assert string_value_bytes(rb'{"text":"a\nb\"c"}', TEXT) == 5
    assert string_value_bytes(rb'{"text":"\u4e2d"}', TEXT) == 3  # one CJK character, 3 bytes


def test_several_keys_and_occurrences() -> None:
    data = b'{"content":"ab","reasoning_content":"cde","x":[{"content":"f"}]}'
    assert string_value_bytes(data, (b'"content"', b'"reasoning_content"')) == 6


@given(st.text(max_size=200))
def test_size_matches_utf8_for_plain_text(text: str) -> None:
    encoded = orjson.dumps({"other": "x", "text": text})
    assert string_value_bytes(encoded, TEXT) == len(text.encode())
    # pydantic-ai-style replays escape everything non-ASCII as \uXXXX (surrogate pairs too)
    ascii_escaped = json.dumps({"text": text}, ensure_ascii=True).encode()
    assert string_value_bytes(ascii_escaped, TEXT) == len(text.encode())


def test_first_string_value() -> None:
    data = b'{"model":"","x":{"model":{"a":1}},"model":"gpt-4o"}'
    assert first_string_value(data, b'"model"') == "gpt-4o"  # empty and object values skipped
    assert first_string_value(rb'{"model":"a\/b"}', b'"model"') == "a/b"
    assert first_string_value(b'{"name":"x"}', b'"model"') is None


def test_has_object_value() -> None:
    assert not has_object_value(b'{"usage":null}', b'"usage"')
    assert has_object_value(b'{"usage":null,"x_groq":{"usage":{"prompt_tokens":1}}}', b'"usage"')
    assert has_object_value(b'{"usage" : {}}', b'"usage"')
