"""The gate's decisions as plain values, with an in-memory resolver standing in for Redis.

(The same behaviour is tested against real Redis and real Envoy in tests/extproc and tests/e2e.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tokenbook.attribution.keys import generate_key, hash_key
from tokenbook.attribution.model import Attribution, KeyRecord
from tokenbook.attribution.registry import RegistryUnavailable
from tokenbook.gate import Admit, Gate, GatePolicy, Refuse
from tokenbook.request_body import READ_MODEL, body_use
from tokenbook.requestinfo import RequestInfo

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class FakeResolver:
    def __init__(self, records: dict[str, KeyRecord], *, down: bool = False) -> None:
        self.records = records
        self.down = down

    async def resolve(self, key: str) -> KeyRecord | None:
        if self.down:
            raise RegistryUnavailable("redis down")
        return self.records.get(hash_key(key))


def _record(key_id: str, **kw: object) -> KeyRecord:
    base: dict[str, object] = {
        "key_id": key_id,
        "attribution": Attribution("alice", "search", "crawler", "indexing"),
        "status": "active",
        "kind": "tokenbook",
        "created_at": NOW - timedelta(days=1),
        "created_by": "test",
    }
    base.update(kw)
    return KeyRecord(**base)  # type: ignore[arg-type]


def _req(
    headers: list[tuple[str, str]], path: str = "/openai/v1/models", provider: str = "openai"
) -> RequestInfo:
    return RequestInfo(
        route_name=provider,
        provider=provider,
        method="GET",
        raw_path=path,
        request_id="r",
        headers=tuple(headers),
    )


def _gate(
    records: dict[str, KeyRecord], policy: GatePolicy | None = None, *, down: bool = False
) -> Gate:
    return Gate(FakeResolver(records, down=down), policy or GatePolicy(), now=lambda: NOW)  # type: ignore[arg-type]


async def test_admit_sets_trusted_headers_and_removes_key_everywhere() -> None:
    key, key_id = generate_key()
    gate = _gate({hash_key(key): _record(key_id)})
    d = await gate.decide(
        _req([("authorization", f"Bearer {key}"), ("x-api-key", key), ("x-tokenbook-owner", "eve")])
    )
    assert isinstance(d, Admit)
    assert dict(d.set_headers)["x-tokenbook-owner"] == "alice"
    assert set(d.remove_headers) == {
        "authorization",
        "x-api-key",
    }  # owner is overwritten, not removed
    assert d.metadata["key_id"] == key_id


async def test_query_key_is_cut_from_the_path() -> None:
    key, key_id = generate_key()
    gate = _gate({hash_key(key): _record(key_id)})
    d = await gate.decide(
        _req(
            [], path=f"/gemini/v1beta/models/m:generateContent?alt=sse&key={key}", provider="gemini"
        )
    )
    assert isinstance(d, Admit)
    assert dict(d.set_headers)[":path"] == "/gemini/v1beta/models/m:generateContent?alt=sse"
    # the meter's path (it sees no request headers) is the one that went on
    assert d.metadata["path"] == "/gemini/v1beta/models/m:generateContent?alt=sse"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/openai/v1/chat/completions", "/openai/v1/chat/completions"),
        ("/azure_openai/x?api-version=2024-10-21", "/azure_openai/x?api-version=2024-10-21"),
        # a provider key passing through (unknown keys allowed) stays out of the metadata,
        # which access logs can print
        (
            "/gemini/v1beta/models/m:streamGenerateContent?key=AIzaPROVIDER&alt=sse",
            "/gemini/v1beta/models/m:streamGenerateContent?alt=sse",
        ),
    ],
)
async def test_the_meters_path_in_the_metadata_never_holds_a_key(path: str, expected: str) -> None:
    gate = _gate({}, GatePolicy(unknown_keys="allow"))
    d = await gate.decide(_req([], path=path, provider=path.split("/")[1]))
    assert isinstance(d, Admit)
    assert d.metadata["path"] == expected
    assert "AIza" not in "".join(d.metadata.values())


@pytest.mark.parametrize(
    ("kw", "decision"),
    [
        ({"status": "revoked"}, "key_revoked"),
        ({"expires_at": NOW - timedelta(seconds=1)}, "key_expired"),
    ],
)
async def test_revoked_and_expired_are_refused(kw: dict[str, object], decision: str) -> None:
    key, key_id = generate_key()
    d = await _gate({hash_key(key): _record(key_id, **kw)}).decide(
        _req([("authorization", f"Bearer {key}")])
    )
    assert isinstance(d, Refuse)
    assert d.decision == decision
    assert d.reply.status == 401


async def test_unknown_key_policies() -> None:
    d = await _gate({}).decide(_req([("authorization", "Bearer sk-something")]))
    assert isinstance(d, Refuse)
    assert d.reply.status == 401
    d = await _gate({}, GatePolicy(unknown_keys="allow")).decide(
        _req([("authorization", "Bearer sk-something")])
    )
    assert isinstance(d, Admit)
    assert d.metadata["owner"] == "unattributed"
    assert d.metadata["key_id"].startswith("fp_")
    assert "authorization" not in d.remove_headers  # not a tokenbook key: passes through


async def test_registry_down_policies() -> None:
    key, _ = generate_key()
    d = await _gate({}, down=True).decide(_req([("authorization", f"Bearer {key}")]))
    assert isinstance(d, Refuse)
    assert d.reply.status == 503
    d = await _gate({}, GatePolicy(registry_down="allow"), down=True).decide(
        _req([("authorization", f"Bearer {key}")])
    )
    assert isinstance(d, Admit)
    assert d.metadata["team"] == "unattributed"
    assert "authorization" in d.remove_headers  # a tokenbook key never leaves the gateway


async def test_credential_swap() -> None:
    key, key_id = generate_key()
    policy = GatePolicy(
        credential_swap=True,
        credentials={"prod": "sk-ant-real"},
        provider_credentials={"anthropic": "prod"},
    )
    d = await _gate({hash_key(key): _record(key_id)}, policy).decide(
        _req([("x-api-key", key)], path="/anthropic/v1/messages", provider="anthropic")
    )
    assert isinstance(d, Admit)
    assert dict(d.set_headers)["x-api-key"] == "sk-ant-real"
    assert "x-api-key" not in d.remove_headers  # overwritten, never removed after being set


def test_the_body_is_rewritten_only_for_include_usage_providers() -> None:
    gate = _gate({})
    body = b'{"model":"command-a-03-2025","stream":true,"messages":[]}'
    providers = GatePolicy().include_usage_providers
    cohere_use = body_use("cohere", "POST", "/v2/chat", None, providers)
    assert cohere_use is not None
    cohere = gate.rewrite_body(body, cohere_use)
    assert cohere.body is None  # Cohere's body is read for its model, never changed
    assert cohere.request_model == "command-a-03-2025"
    openai_use = body_use("openai", "POST", "/v1/chat/completions", None, providers)
    assert openai_use is not None
    openai_ = gate.rewrite_body(body, openai_use)
    assert openai_.body is not None
    assert b'"include_usage":true' in openai_.body
    assert openai_.request_model == "command-a-03-2025"


def test_a_body_read_for_its_model_is_never_rewritten_whatever_the_provider_list() -> None:
    # An operator listing cohere in include_usage_providers: its chat API is not a Chat
    # Completions one, so its body is still only read.
    use = body_use("cohere", "POST", "/v2/chat", None, frozenset({"cohere", "openai"}))
    assert use == READ_MODEL
    body = b'{"model":"command-a-03-2025","stream":true,"messages":[]}'
    assert _gate({}).rewrite_body(body, use).body is None
