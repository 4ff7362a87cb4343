"""Budgets and the kill switch through real Envoy, with the official OpenAI SDK.

- A burst of 200 parallel requests at a key with a tiny daily budget: what is spent beyond the
  budget stays within the bound documented in `tokenbook.ledger.admission`
  (``floor(B / r) * max(0, c_max - r)``), refused requests get a 429 naming the budget.
- ``tokenbook agents suspend`` on a running serve: the agent's requests get 403 within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.e2e.conftest import _transports, issue_key, sample, tokenbook_cli
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import format_usd, period_of, to_micro
from tokenbook.testing.stack import Stack

pytestmark = pytest.mark.e2e

KS = Keyspace()
FIXTURE = "openai/chat/nonstream_prompt_cache_hit.json"
RESERVATION_USD = 0.0001  # the floor r, small so that many requests fit in the tiny budget
BUDGET_USD = 0.003
BURST = 200


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("budgets")
    config = work / "tokenbook.yaml"
    config.write_text(f"budget_reservation_usd: {RESERVATION_USD}\n")
    s = Stack(
        workdir=work,
        corpus=corpus_dir,
        serve_args=["--config", str(config), "--transport", _transports()[0]],
    )
    s.start()
    yield s
    s.stop()


def _ledger(stack: Stack, key_id: str) -> list[dict[bytes, bytes]]:
    c = redis.Redis.from_url(stack.redis_url)
    try:
        raw: list[Any] = c.xrange(KS.ledger) or []
        return [f for _, f in raw if f[b"key_id"] == key_id.encode()]
    finally:
        c.close()


async def _burst(stack: Stack, key: str) -> list[int | openai.APIStatusError]:
    """BURST requests at once; each answer is 200, or the SDK's error."""
    # The SDK's own pool allows 1000 connections: every request of the burst gets its own.
    async with openai.AsyncOpenAI(
        base_url=f"{stack.gateway}/openai/v1", api_key=key, max_retries=0, timeout=30
    ) as client:

        async def one() -> int | openai.APIStatusError:
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={
                        "x-fake-fixture": FIXTURE,
                        # ~1 s per response: the whole burst is in flight before any is booked
                        "x-fake-chunk-bytes": "400",
                        "x-fake-chunk-delay-ms": "300",
                    },
                )
            except openai.APIStatusError as exc:
                return exc
            return 200

        return await asyncio.gather(*(one() for _ in range(BURST)))


def test_parallel_burst_overruns_a_tiny_budget_at_most_by_the_bound(budget_stack: Stack) -> None:
    stack = budget_stack
    issued = issue_key(
        stack, "bea", "research", "swarm", "burst", "--budget-daily-usd", str(BUDGET_USD)
    )
    key_id = issued["key_id"]
    started = time.monotonic()
    answers = asyncio.run(_burst(stack, issued["key"]))
    burst_s = time.monotonic() - started
    errors = [a for a in answers if not isinstance(a, int)]
    ok = len(answers) - len(errors)
    refused = sum(isinstance(e, openai.RateLimitError) for e in errors)
    assert refused == len(errors), f"unexpected answers: {errors[:3]}"
    for e in errors:
        assert "budget of key" in str(e)
        assert e.response.headers.get("retry-after")
    assert ok > 0
    assert refused > 0
    deadline = time.monotonic() + 20
    while len(_ledger(stack, key_id)) < ok and time.monotonic() < deadline:
        time.sleep(0.1)
    entries = _ledger(stack, key_id)
    assert len(entries) == ok, "every admitted request is booked once"
    costs = [to_micro(float(f[b"cost_usd"])) for f in entries]
    c = redis.Redis.from_url(stack.redis_url)
    day = period_of("daily", datetime.now(UTC)).label
    spent = int(c.get(KS.spend("key", key_id, day)) or 0)
    reserved = c.get(KS.reserved("key", key_id, day))
    c.close()
    budget, floor = to_micro(BUDGET_USD), to_micro(RESERVATION_USD)
    bound = (budget // floor) * max(0, max(costs) - floor)
    overrun = spent - budget
    print(
        f"\nbudget burst: {BURST} parallel requests in {burst_s:.1f}s, {ok} admitted, {refused}"
        f" refused (429); one request costs {format_usd(max(costs))}; spent {format_usd(spent)}"
        f" of {format_usd(budget)}: overrun {format_usd(overrun)}, documented bound"
        f" floor(B/r)*(c_max-r) = {budget // floor}*({format_usd(max(costs))}-"
        f"{format_usd(floor)}) = {format_usd(bound)}"
    )
    assert spent == sum(costs)
    assert overrun <= bound
    assert reserved is None, "every reservation was released by its booking"
    # The budget is used up now: refused straight away, and counted.
    with pytest.raises(openai.RateLimitError, match="is used up"):
        openai.OpenAI(
            base_url=f"{stack.gateway}/openai/v1", api_key=issued["key"], max_retries=0
        ).chat.completions.create(model="gpt-4o-mini", messages=[], extra_headers={})
    text = stack.scrape()
    assert sample(text, "tokenbook_budget_denied_total", scope="key", id=key_id) == refused + 1
    # tokenbook_budget_remaining_usd comes from a snapshot refreshed every 5 s.
    expected = (budget - spent) / 1e6
    deadline = time.monotonic() + 8
    remaining = None
    while remaining != pytest.approx(expected) and time.monotonic() < deadline:
        time.sleep(0.2)
        remaining = sample(
            stack.scrape(), "tokenbook_budget_remaining_usd", scope="key", id=key_id,
            period="daily",
        )  # fmt: skip
    assert remaining == pytest.approx(expected)


def test_suspending_an_agent_takes_effect_within_a_second(budget_stack: Stack) -> None:
    stack = budget_stack
    issued = issue_key(stack, "sam", "ops", "rogue-bot", "chores")
    client = openai.OpenAI(
        base_url=f"{stack.gateway}/openai/v1", api_key=issued["key"], max_retries=0
    )

    def call() -> int:
        try:
            client.embeddings.create(model="text-embedding-3-small", input="hi")
        except openai.PermissionDeniedError as exc:
            return 403 if "agent 'rogue-bot' is suspended" in str(exc) else 0
        return 200

    assert call() == 200
    done = tokenbook_cli(stack, "agents", "suspend", "rogue-bot", "--reason", "e2e drill")
    assert done.returncode == 0, done.stderr
    suspended_at = time.monotonic()
    while call() != 403:
        assert time.monotonic() - suspended_at < 2, "suspension not applied"
        time.sleep(0.02)
    took = time.monotonic() - suspended_at
    done = tokenbook_cli(stack, "agents", "resume", "rogue-bot")
    assert done.returncode == 0, done.stderr
    resumed_at = time.monotonic()
    while call() != 200:
        assert time.monotonic() - resumed_at < 2, "resume not applied"
        time.sleep(0.02)
    print(
        f"\nkill switch: suspended after {took * 1000:.0f} ms, resumed after"
        f" {(time.monotonic() - resumed_at) * 1000:.0f} ms"
    )
    assert took < 1.0
