"""Key format, hashing, fingerprints, attribution validation, record codec. Pure."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenbook.attribution.codec import MalformedRecord, decode_record, encode_record
from tokenbook.attribution.keys import (
    KEY_PREFIX,
    NAME_RE,
    AttributionError,
    fingerprint,
    generate_key,
    hash_key,
    imported_key_id,
    parse_key_id,
    validate_attribution,
)
from tokenbook.attribution.model import (
    KIND_IMPORTED,
    STATUS_ACTIVE,
    STATUS_REVOKED,
    Attribution,
    KeyRecord,
)

OK = {"owner": "alice", "team": "search", "agent": "crawler-2", "workload": "index.nightly"}


def test_generated_key_has_the_documented_shape() -> None:
    key, key_id = generate_key()
    assert key.startswith(KEY_PREFIX)
    assert re.fullmatch(r"[a-z2-7]{12}", key_id)
    assert key[3:15] == key_id
    assert key[15] == "_"
    secret = key[16:]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)  # 32 bytes, url-safe base64, no padding


def test_generated_keys_are_unique_and_parse_back() -> None:
    keys = [generate_key() for _ in range(2000)]
    assert len({k for k, _ in keys}) == len(keys)
    assert len({i for _, i in keys}) == len(keys)
    for key, key_id in keys:
        assert parse_key_id(key) == key_id


def test_parse_uses_fixed_length_not_underscores() -> None:
    # A secret full of '_' and '-' must not confuse the parser.
    key = "tb_abcdefghijk2_" + "_" * 10 + "-a_b" * 11
    assert parse_key_id(key) == "abcdefghijk2"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sk-proj-abc",  # an OpenAI key
        "tb_ABCDEFGHIJK2_" + "a" * 43,  # upper-case key_id
        "tb_abcdefghijk1_" + "a" * 43,  # '1' is not base32
        "tb_abcdefghijk_" + "a" * 43,  # 11-char key_id
        "tb_abcdefghijk2" + "a" * 43,  # no separator
        "tb_abcdefghijk2_" + "a" * 42,  # secret too short
        "tb_abcdefghijk2_" + "a" * 42 + "=",  # padding / foreign character
        "tb_abcdefghijk2_" + "a" * 43 + "\n",  # trailing newline
        " tb_abcdefghijk2_" + "a" * 43,
    ],
)
def test_parse_rejects_malformed_keys(bad: str) -> None:
    assert parse_key_id(bad) is None


def test_hash_is_sha256_of_the_full_key() -> None:
    key, _ = generate_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert hash_key(key) != hash_key(key + "x")


def test_fingerprint_is_stable_short_and_unrelated_to_the_stored_hash() -> None:
    key = "sk-ant-api03-secret"
    fp = fingerprint(key)
    assert fp == fingerprint(key)
    assert re.fullmatch(r"fp_[0-9a-f]{12}", fp)
    assert fp != fingerprint(key + "!")
    assert fp[3:] not in hash_key(key)  # domain-separated: cannot be matched against hashes


def test_imported_key_id_is_deterministic_and_key_id_shaped() -> None:
    h = hash_key("sk-live-123")
    assert imported_key_id(h) == imported_key_id(h)
    assert re.fullmatch(r"[a-z2-7]{12}", imported_key_id(h))
    assert imported_key_id(h) != imported_key_id(hash_key("sk-live-124"))


def test_valid_attribution() -> None:
    a = validate_attribution(**OK)
    assert a == Attribution("alice", "search", "crawler-2", "index.nightly")
    assert list(a.items()) == list(OK.items())


@pytest.mark.parametrize("field", ["owner", "team", "agent", "workload"])
@pytest.mark.parametrize(
    ("value", "word"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Alice", "malformed"),
        ("-alice", "malformed"),
        ("a b", "malformed"),
        ("a" * 64, "malformed"),
        ("émile", "malformed"),
        ("a\nb", "malformed"),
        ("unattributed", "reserved"),
        ("other", "reserved"),
    ],
)
def test_each_field_is_validated(field: str, value: str | None, word: str) -> None:
    args: dict[str, str | None] = {**OK, field: value}
    with pytest.raises(AttributionError) as info:
        validate_attribution(**args)
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert word in str(info.value)


def test_longest_valid_name_is_accepted() -> None:
    name = "a" + "b" * 62
    assert validate_attribution(name, "t", "a", "w").owner == name


@given(st.from_regex(NAME_RE, fullmatch=True))
def test_every_name_matching_the_pattern_is_accepted(name: str) -> None:
    if name in ("unattributed", "other"):
        return
    assert validate_attribution(name, name, name, name).team == name


def _record(**changes: object) -> KeyRecord:
    base = KeyRecord(
        key_id="abcdefghijk2",
        attribution=validate_attribution(**OK),
        status=STATUS_ACTIVE,
        kind="tokenbook",
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        created_by="admin",
    )
    fields = {f: getattr(base, f) for f in base.__slots__}
    fields.update(changes)
    return KeyRecord(**fields)


def test_denial_reason() -> None:
    now = datetime(2025, 6, 1, tzinfo=UTC)
    assert _record().denial_reason(now) is None
    assert _record(status=STATUS_REVOKED).denial_reason(now) == "revoked"
    assert _record(expires_at=now).denial_reason(now) == "expired"
    assert _record(expires_at=now + timedelta(seconds=1)).denial_reason(now) is None


def test_codec_round_trip_keeps_every_field() -> None:
    record = _record(
        kind=KIND_IMPORTED,
        provider="openai",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC),
        budget_daily_usd=12.5,
        budget_monthly_usd=300.0,
        upstream_credential_ref="OPENAI_PROD",
    )
    fields = encode_record(record)
    assert fields["expires_at"] == "2026-01-01T00:00:00Z"
    assert decode_record(fields) == record
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    assert decode_record(as_bytes) == record


def test_codec_accepts_the_original_design_layout_without_kind() -> None:
    fields = encode_record(_record())
    del fields["kind"]
    assert decode_record(fields).kind == "tokenbook"


def test_codec_names_every_problem() -> None:
    fields = encode_record(_record())
    del fields["owner"]
    fields["team"] = "Search Team"
    fields["budget_daily_usd"] = "-3"
    fields["status"] = "paused"
    with pytest.raises(MalformedRecord) as info:
        decode_record(fields)
    problems = info.value.problems
    assert "missing owner" in problems
    assert any(p.startswith("team 'Search Team' is malformed") for p in problems)
    assert any("budget_daily_usd" in p for p in problems)
    assert any("status 'paused'" in p for p in problems)


def test_public_dict_has_no_secret_material() -> None:
    public = _record().to_public_dict()
    assert set(public) >= {"key_id", "owner", "team", "agent", "workload", "status", "kind"}
    assert not any("hash" in k or "secret" in k for k in public)
