"""Every recorded provider response in tests/corpus goes through `open_adapter`, whole and split.

The expected booking is derived here, independently of the parsers, from the corpus's
``expected`` column and the per-provider semantics table in ``tests/corpus/README.md``: each
provider's overlapping counters are turned into tokenbook's disjoint token types with the
simplest arithmetic the table implies. Rows whose ``expected`` counts are all null must book no
reported tokens.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenbook.usage import (
    Extraction,
    Reason,
    ResponseContext,
    Source,
    TokenUsage,
    open_adapter,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
ROWS: list[dict[str, Any]] = [
    json.loads(line) for line in (CORPUS / "index.jsonl").read_text().splitlines() if line
]
IDS = [row["file"] for row in ROWS]
STREAM_ROWS = [row for row in ROWS if row["body_format"] != "json"]
# APIs whose counters follow OpenAI's inclusive semantics (README table, first two rows).
OPENAI_STYLE = frozenset({"chat", "completions", "responses"})


def body(row: dict[str, Any]) -> bytes:
    return (CORPUS / str(row["file"])).read_bytes()


def context(row: dict[str, Any], *, content_encoding: str = "") -> ResponseContext:
    """The ResponseContext the meter would build for the recorded request/response."""
    headers = {k.lower(): str(v) for k, v in (row.get("usage_headers") or {}).items()}
    if row["content_type"]:
        headers["content-type"] = row["content_type"]
    if content_encoding:
        headers["content-encoding"] = content_encoding
    return ResponseContext(
        provider=row["provider"],
        path=row["request_path"],
        query=row["request_query"] or "",
        status=row["http_status"],
        response_headers=headers,
        request_model=row["request_model"],
    )


def expected_usage(row: dict[str, Any]) -> TokenUsage | None:
    """The disjoint booking ``expected`` implies, or None for "no tokens booked"."""
    e = row["expected"]
    inp, out = e["input_tokens"], e["output_tokens"]
    cached, write, reasoning = (
        e["cached_input_tokens"],
        e["cache_write_tokens"],
        e["reasoning_tokens"],
    )
    if all(v is None for v in (inp, out, cached, write, reasoning)):
        return None
    api, provider = row["api"], row["provider"]
    if api in OPENAI_STYLE:
        # prompt ⊇ cached + cache_write; completion ⊇ reasoning.
        if provider == "gemini" and reasoning is None and e["total_tokens"] is not None:
            # Gemini's OpenAI-compatible endpoint: hidden thinking is only in total_tokens.
            reasoning = e["total_tokens"] - inp - out
            out += reasoning
        if reasoning is not None and out is not None:
            reasoning = min(reasoning, out)  # OpenRouter states reasoning 11 of completion 10
        return TokenUsage(
            input=inp - (cached or 0) - (write or 0),
            cached_input=cached,
            cache_write=write,
            output=out - (reasoning or 0),
            reasoning=reasoning,
        )
    if api == "generate_content":
        # promptTokenCount ⊇ cached; toolUsePromptTokenCount is outside it; candidates ∌ thoughts.
        tool = (row.get("expected_extra") or {}).get("tool_use_prompt_tokens", 0)
        return TokenUsage(
            input=None if inp is None else inp - (cached or 0) + tool,
            cached_input=cached,
            output=out,
            reasoning=reasoning,
        )
    if api in ("cohere_chat_v1", "cohere_chat_v2"):
        # tokens.input_tokens ⊇ usage.cached_tokens
        return TokenUsage(
            input=inp - (cached or 0), cached_input=cached, output=out, reasoning=reasoning
        )
    # Anthropic, Bedrock, Ollama, embeddings: the counters are already disjoint.
    return TokenUsage(
        input=inp, cached_input=cached, cache_write=write, output=out, reasoning=reasoning
    )


def expected_reason(row: dict[str, Any]) -> Reason:
    """Why a row with all-null ``expected`` books nothing."""
    if row["http_status"] >= 400:
        return Reason.UPSTREAM_ERROR
    if row["api"] == "count_tokens":
        return Reason.NOT_BILLED
    raw = body(row)
    if b"event: error" in raw or b'"type":"error"' in raw:
        return Reason.UPSTREAM_ERROR
    return Reason.NO_USAGE


def expected_model(row: dict[str, Any]) -> str | None:
    model: str | None = row["expected"]["response_model"]
    requested: str | None = row["request_model"]
    return model if model is not None else requested


def run(ctx: ResponseContext, chunks: Iterable[bytes], *, end_of_stream: bool = True) -> Extraction:
    adapter = open_adapter(ctx)
    for chunk in chunks:
        adapter.feed(chunk)
    return adapter.finish(end_of_stream=end_of_stream)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def mismatch(row: dict[str, Any], got: Extraction) -> str | None:
    """Why ``got`` is not what the row expects, or None when it is."""
    want = expected_usage(row)
    if got.model != expected_model(row):
        return f"model {got.model!r} != {expected_model(row)!r}"
    if want is None:
        if got.source is Source.REPORTED and not got.usage.is_empty():
            return f"booked reported tokens {got.usage} for a row without usage"
        if got.reason is not expected_reason(row):
            return f"reason {got.reason!r} != {expected_reason(row)!r}"
        return None
    if got.source is not Source.REPORTED or got.reason is not Reason.NONE:
        return f"source/reason {got.source}/{got.reason} ({got.detail})"
    if got.usage != want:
        return f"usage {got.usage} != {want}"
    if got.provider_total != row["expected"]["total_tokens"]:
        return f"provider_total {got.provider_total} != {row['expected']['total_tokens']}"
    return None


def test_corpus_tally() -> None:
    """All rows, whole bodies: print the tally and fail on any miss."""
    misses: list[str] = []
    exact = with_usage = no_usage = no_usage_ok = 0
    for row in ROWS:
        got = run(context(row), [body(row)])
        problem = mismatch(row, got)
        if expected_usage(row) is None:
            no_usage += 1
            no_usage_ok += problem is None
        else:
            with_usage += 1
            exact += problem is None
        if problem:
            misses.append(f"{row['file']}: {problem}")
    print(
        f"\ncorpus: {exact}/{with_usage} with usage booked exactly, "
        f"{no_usage_ok}/{no_usage} without usage correctly booked nothing "
        f"({len(ROWS)} files)"
    )
    assert not misses, "\n".join(misses)
    assert with_usage + no_usage == len(ROWS) == 145


@pytest.mark.parametrize("row", ROWS, ids=IDS)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12))
def test_corpus_random_chunks(row: dict[str, Any], cuts: list[int]) -> None:
    data = body(row)
    got = run(context(row), split(data, [c % (len(data) + 1) for c in cuts]))
    assert mismatch(row, got) is None


@pytest.mark.parametrize("row", ROWS, ids=IDS)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12))
def test_corpus_gzip_random_chunks(row: dict[str, Any], cuts: list[int]) -> None:
    data = gzip.compress(body(row))
    chunks = split(data, [c % (len(data) + 1) for c in cuts])
    got = run(context(row, content_encoding="gzip"), chunks)
    assert mismatch(row, got) is None


@pytest.mark.parametrize(
    "row", [r for r in STREAM_ROWS if r["bytes"] <= 40_000], ids=lambda r: r["file"]
)
def test_corpus_streams_one_byte_at_a_time(row: dict[str, Any]) -> None:
    data = body(row)
    got = run(context(row), (data[i : i + 1] for i in range(len(data))))
    assert mismatch(row, got) is None


def test_corpus_totals_add_up() -> None:
    """Wherever a provider states a total, the disjoint split sums to it."""
    checked = 0
    for row in ROWS:
        got = run(context(row), [body(row)])
        if got.source is Source.REPORTED and got.provider_total is not None:
            assert got.usage.total() == got.provider_total, row["file"]
            checked += 1
    assert checked >= 80  # most of the corpus states a total; the check must not go vacuous


@pytest.mark.parametrize("row", STREAM_ROWS, ids=lambda r: r["file"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corpus_truncated_streams(row: dict[str, Any], data: st.DataObject) -> None:
    """A stream cut anywhere never raises; before its usage it is an estimate."""
    raw = body(row)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)), label="cut")
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=cut), max_size=6), label="cuts")
    got = run(context(row), split(raw[:cut], cuts), end_of_stream=False)
    want = expected_usage(row)
    if got.source is Source.REPORTED and not got.usage.is_empty():
        # Usage is only reported once the provider's final statement arrived.
        assert want is not None
        assert got.usage == want
        return
    if got.reason is Reason.UPSTREAM_ERROR:
        assert got.usage.is_empty()
        return
    assert got.source is Source.ESTIMATED
    assert got.reason is Reason.TRUNCATED
    for _, value in got.usage.items():
        assert value >= 0
