"""Header rules of the gate: where the key is, what to strip, what to set. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tokenbook.attribution.headers import (
    QUERY,
    UNATTRIBUTED,
    UnsupportedCredential,
    attribution_headers,
    client_attribution_headers,
    credential_header,
    find_key,
    headers_carrying,
    key_headers_to_remove,
    remove_query_key,
    unattributed,
)
from tokenbook.attribution.keys import fingerprint, validate_attribution
from tokenbook.attribution.model import KeyRecord

KEY = "tb_abcdefghijk2_" + "s" * 43


@pytest.mark.parametrize(
    ("headers", "query", "where"),
    [
        ([("authorization", f"Bearer {KEY}")], "", "authorization"),
        ([("authorization", f"bearer {KEY}")], "", "authorization"),
        ([("authorization", f"BEARER   {KEY}  ")], "", "authorization"),
        ([("Authorization", f"Bearer {KEY}")], "", "authorization"),
        ([("x-api-key", KEY)], "", "x-api-key"),
        ([("X-Api-Key", f" {KEY} ")], "", "x-api-key"),
        ([("api-key", KEY)], "", "api-key"),
        ([("x-goog-api-key", KEY)], "", "x-goog-api-key"),
        ([], f"key={KEY}", QUERY),
        ([], f"?alt=sse&key={KEY}", QUERY),
        ([("content-type", "application/json")], f"alt=sse&key={KEY}&x=1", QUERY),
    ],
)
def test_find_key_in_each_place(headers: list[tuple[str, str]], query: str, where: str) -> None:
    assert find_key(headers, query) == (KEY, where)


def test_find_key_order_is_authorization_then_headers_then_query() -> None:
    all_places = [
        ("x-goog-api-key", "goog"),
        ("api-key", "azure"),
        ("x-api-key", "anthropic"),
        ("authorization", "Bearer openai"),
    ]
    assert find_key(all_places, "key=query") == ("openai", "authorization")
    assert find_key(all_places[:3], "key=query") == ("anthropic", "x-api-key")
    assert find_key(all_places[:2], "key=query") == ("azure", "api-key")
    assert find_key(all_places[:1], "key=query") == ("goog", "x-goog-api-key")
    assert find_key([], "key=query") == ("query", QUERY)


def test_non_bearer_authorization_is_not_a_key() -> None:
    sigv4 = "AWS4-HMAC-SHA256 Credential=AKIA/20250101/us-east-1/bedrock/aws4_request"
    assert find_key([("authorization", sigv4)], "") is None
    assert find_key([("authorization", "Basic dXNlcjpwYXNz")], "") is None
    assert find_key([("authorization", "Bearer "), ("x-api-key", "k")], "") == ("k", "x-api-key")


@pytest.mark.parametrize("query", ["", "key=", "alt=sse", "keys=abc", "mykey=abc", "?"])
def test_no_key(query: str) -> None:
    assert find_key([("x-api-key", "  ")], query) is None


def test_query_key_is_percent_decoded() -> None:
    assert find_key([], "key=a%2Bb") == ("a+b", QUERY)


def test_first_of_repeated_header_wins() -> None:
    assert find_key([("x-api-key", "one"), ("x-api-key", "two")], "") == ("one", "x-api-key")


def test_headers_to_remove() -> None:
    assert key_headers_to_remove("authorization") == ["authorization"]
    assert key_headers_to_remove("x-goog-api-key") == ["x-goog-api-key"]
    assert key_headers_to_remove(QUERY) == []


def test_every_header_carrying_the_key_is_found() -> None:
    headers = [
        ("authorization", f"Bearer {KEY}"),
        ("X-Api-Key", KEY),
        ("x-api-key", KEY),
        ("user-agent", KEY),  # not a key header: left alone
        ("api-key", "other"),
    ]
    assert headers_carrying(headers, KEY) == ["authorization", "x-api-key"]


def test_remove_query_key_keeps_the_rest_byte_for_byte() -> None:
    assert remove_query_key(f"alt=sse&key={KEY}&q=a%20b") == "alt=sse&q=a%20b"
    assert remove_query_key(f"key={KEY}") == ""
    assert remove_query_key("?key=1&key=2&keys=3") == "keys=3"
    assert remove_query_key("alt=sse") == "alt=sse"


def _record() -> KeyRecord:
    return KeyRecord(
        key_id="abcdefghijk2",
        attribution=validate_attribution("alice", "search", "crawler", "indexing"),
        status="active",
        kind="tokenbook",
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        created_by="admin",
    )


def test_attribution_headers_for_a_key() -> None:
    assert attribution_headers(_record()) == [
        ("x-tokenbook-key-id", "abcdefghijk2"),
        ("x-tokenbook-owner", "alice"),
        ("x-tokenbook-team", "search"),
        ("x-tokenbook-agent", "crawler"),
        ("x-tokenbook-workload", "indexing"),
    ]


def test_attribution_headers_for_unattributed_traffic() -> None:
    headers = dict(attribution_headers(unattributed("sk-unknown")))
    assert headers["x-tokenbook-key-id"] == fingerprint("sk-unknown")
    assert {headers[f"x-tokenbook-{f}"] for f in ("owner", "team", "agent", "workload")} == {
        UNATTRIBUTED
    }
    assert dict(attribution_headers(unattributed(None)))["x-tokenbook-key-id"] == "none"


def test_client_sent_attribution_headers_are_found_in_any_case() -> None:
    headers = [
        ("x-tokenbook-owner", "mallory"),
        ("X-Tokenbook-Team", "finance"),
        ("X-TOKENBOOK-KEY-ID", "forged"),
        ("x-tokenbook-owner", "again"),
        ("x-tokenbookish", "not ours"),
        ("content-type", "application/json"),
    ]
    assert client_attribution_headers(headers) == [
        "x-tokenbook-owner",
        "x-tokenbook-team",
        "x-tokenbook-key-id",
    ]


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("openai", ("authorization", "Bearer c")),
        ("mistral", ("authorization", "Bearer c")),
        ("vertex_ai", ("authorization", "Bearer c")),
        ("anthropic", ("x-api-key", "c")),
        ("gemini", ("x-goog-api-key", "c")),
        ("azure_openai", ("api-key", "c")),
    ],
)
def test_credential_header(provider: str, expected: tuple[str, str]) -> None:
    assert credential_header(provider, "c") == expected


def test_credential_header_refuses_bedrock_and_bad_values() -> None:
    with pytest.raises(UnsupportedCredential, match="SigV4"):
        credential_header("bedrock", "c")
    with pytest.raises(UnsupportedCredential):
        credential_header("openai", "c\r\nx-evil: 1")
    with pytest.raises(UnsupportedCredential):
        credential_header("openai", "")
