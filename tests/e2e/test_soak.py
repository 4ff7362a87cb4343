"""Soak: steady load through real Envoy for a bounded time, then booked == sent, per token type.

Eight client threads send a mix of recorded responses (JSON and SSE, gzip-encoded and chunked,
OpenAI, Anthropic and Gemini) for ``TOKENBOOK_SOAK_SECONDS`` (default 120 s). Every completed
request's expected tokens are known from the corpus; at the end the scraped counters must equal
the traffic sent exactly — tokens per type and cost — and no request may be unbooked. The
table is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

import http.client
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import issue_key, samples_sum
from tokenbook.pricing import Pricer
from tokenbook.testing.stack import Stack
from tokenbook.usage.types import TOKEN_TYPES, TokenUsage

pytestmark = pytest.mark.e2e

SOAK_SECONDS = float(os.environ.get("TOKENBOOK_SOAK_SECONDS", "120"))
CLIENTS = 8


@dataclass(frozen=True)
class Shot:
    name: str
    provider: str
    path: str
    model: str
    tokens: Mapping[str, int]  # disjoint token types, from the corpus `expected` values
    headers: Mapping[str, str]


SHOTS = (
    Shot(
        "openai-json-cached",
        "openai",
        "/openai/v1/chat/completions",
        "gpt-4o-mini-2024-07-18",
        {"input": 125, "cached_input": 1024, "output": 353, "reasoning": 0},
        {"x-fake-fixture": "openai/chat/nonstream_prompt_cache_hit.json"},
    ),
    Shot(
        "openai-sse-reasoning",
        "openai",
        "/openai/v1/chat/completions",
        "gpt-5-nano-2025-08-07",
        {"input": 12, "cached_input": 0, "output": 0, "reasoning": 100},
        {
            "x-fake-fixture": "openai/chat/stream_include_usage_reasoning.sse",
            "x-fake-chunk-bytes": "256",
        },
    ),
    Shot(
        "anthropic-json-cache-write",
        "anthropic",
        "/anthropic/v1/messages",
        "claude-sonnet-4-5-20250929",
        {"input": 3, "cached_input": 1111, "cache_write": 418, "output": 33},
        {"x-fake-fixture": "anthropic/messages/nonstream_cache_write_and_read.json"},
    ),
    Shot(
        "anthropic-sse-gzip",
        "anthropic",
        "/anthropic/v1/messages",
        "claude-3-5-sonnet-20240620",
        {"input": 4, "cached_input": 1165, "cache_write": 0, "output": 221},
        {
            "x-fake-fixture": "anthropic/messages/stream_cache_read.sse",
            "x-fake-gzip": "1",
            "x-fake-chunk-bytes": "512",
        },
    ),
    Shot(
        "gemini-sse-thoughts",
        "gemini",
        "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        "gemini-2.5-pro",
        {"input": 34, "output": 469, "reasoning": 787},
        {"x-fake-fixture": "gemini/generate_content/stream_sse_thoughts_gemini25pro.sse"},
    ),
)


@pytest.fixture(scope="module")
def soak_stack(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Iterator[Stack]:
    s = Stack(workdir=tmp_path_factory.mktemp("soak"), corpus=corpus_dir)
    s.start()
    yield s
    s.stop()


def _client(
    stack: Stack, key: str, deadline: float, index: int, sent: Counter[str], errors: list[str]
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
    i = index
    while time.monotonic() < deadline:
        shot = SHOTS[i % len(SHOTS)]
        i += 1
        try:
            conn.request(
                "POST",
                shot.path,
                body=b'{"model":"m","messages":[]}',
                headers={"authorization": f"Bearer {key}", **shot.headers},
            )
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{shot.name}: {exc!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", stack.envoy_port, timeout=10)
            continue
        if resp.status == 200:
            sent[shot.name] += 1
        else:
            errors.append(f"{shot.name}: HTTP {resp.status}")
    conn.close()


def test_soak_booked_equals_sent(soak_stack: Stack) -> None:
    stack = soak_stack
    issued = issue_key(stack, "soak", "load", "steady", "soak")
    key_id = issued["key_id"]
    sent: Counter[str] = Counter()
    errors: list[str] = []
    deadline = time.monotonic() + SOAK_SECONDS
    threads = [
        threading.Thread(target=_client, args=(stack, issued["key"], deadline, n, sent, errors))
        for n in range(CLIENTS)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(SOAK_SECONDS + 30)
    elapsed = time.monotonic() - started
    total_sent = sum(sent.values())

    # The meter books after the response: wait until every request is booked (bounded).
    text = ""
    booked = 0.0
    settle = time.monotonic() + 15
    while time.monotonic() < settle:
        text = stack.scrape()
        booked = samples_sum(text, "tokenbook_requests_total", key_id=key_id)
        if booked == total_sent:
            break
        time.sleep(0.2)

    pricer = Pricer()
    expected_tokens: Counter[str] = Counter()
    expected_cost: dict[str, float] = dict.fromkeys(TOKEN_TYPES, 0.0)
    for shot in SHOTS:
        n = sent[shot.name]
        price = pricer.price(shot.provider, shot.model, TokenUsage(**shot.tokens))
        assert price is not None, shot.name
        for token_type, count in shot.tokens.items():
            expected_tokens[token_type] += n * count
            expected_cost[token_type] += n * price.by_type[token_type]

    rows = [f"{'token_type':<14}{'sent':>14}{'booked':>14}{'cost sent $':>16}{'cost booked $':>16}"]
    mismatches = []
    for token_type in TOKEN_TYPES:
        got = samples_sum(text, "tokenbook_tokens_total", key_id=key_id, token_type=token_type)
        got = 0.0 if math.isnan(got) else got
        cost = samples_sum(text, "tokenbook_cost_usd_total", key_id=key_id, token_type=token_type)
        cost = 0.0 if math.isnan(cost) else cost
        rows.append(
            f"{token_type:<14}{expected_tokens[token_type]:>14,}{got:>14,.0f}"
            f"{expected_cost[token_type]:>16.6f}{cost:>16.6f}"
        )
        if got != expected_tokens[token_type] or not math.isclose(
            cost, expected_cost[token_type], rel_tol=1e-9, abs_tol=1e-9
        ):
            mismatches.append(token_type)
    unbooked = samples_sum(text, "tokenbook_requests_unbooked_total")
    print(
        f"\nsoak: {elapsed:.0f}s, {CLIENTS} clients, {total_sent} requests "
        f"({total_sent / elapsed:.0f}/s), booked {booked:.0f}, client errors {len(errors)}"
    )
    print("\n".join(rows))
    assert total_sent > 0
    assert not errors, errors[:5]
    assert booked == total_sent, f"booked {booked} of {total_sent}"
    assert not mismatches, f"drift in {mismatches}"
    assert math.isnan(unbooked) or unbooked == 0
