"""How long `Pricer.price` takes, cold (first lookup of a provider/model) and warm (cached).

Run: ``python -m tokenbook.pricing.bench [--warm-calls N]``. Prints µs per call. Cold lookups
run genai-prices' model matching (and tokenbook's id normalisation) once per (provider, model);
warm calls are what the meter pays per booked request.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from tokenbook.pricing.catalogue import bundled_catalogue
from tokenbook.pricing.pricer import Pricer
from tokenbook.usage.types import TokenUsage

# Ids as providers report them, including forms that need normalisation, and unknown ones.
PAIRS: tuple[tuple[str, str], ...] = (
    ("openai", "gpt-4o-2024-08-06"),
    ("openai", "gpt-5-nano-2025-08-07"),
    ("openai", "o3-mini-2025-01-31"),
    ("azure_openai", "gpt-4o-2024-11-20"),
    ("anthropic", "claude-sonnet-4-5-20250929"),
    ("anthropic", "claude-3-haiku-20240307"),
    ("gemini", "models/gemini-2.5-flash"),
    ("vertex_ai", "gemini-2.5-pro"),
    ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("bedrock", "amazon.nova-micro-v1:0"),
    ("bedrock_mantle", "openai.gpt-oss-120b"),
    ("mistral", "mistral-large-latest"),
    ("groq", "llama-3.3-70b-versatile"),
    ("deepseek", "deepseek-chat"),
    ("openrouter", "anthropic/claude-sonnet-4.6"),
    ("snowflake", "claude-sonnet-4-6"),
    ("openai", "this-model-does-not-exist"),
    ("ollama", "llama3"),
)

USAGE = TokenUsage(input=1200, cached_input=3000, cache_write=500, output=400, reasoning=250)


def run(warm_calls: int) -> list[str]:
    t0 = time.perf_counter()
    bundled_catalogue()
    load_ms = (time.perf_counter() - t0) * 1e3

    pricer = Pricer()
    t0 = time.perf_counter()
    for provider, model in PAIRS:
        pricer.price(provider, model, USAGE)
    cold_us = (time.perf_counter() - t0) * 1e6 / len(PAIRS)

    rounds = max(1, warm_calls // len(PAIRS))
    t0 = time.perf_counter()
    for _ in range(rounds):
        for provider, model in PAIRS:
            pricer.price(provider, model, USAGE)
    warm_us = (time.perf_counter() - t0) * 1e6 / (rounds * len(PAIRS))

    info = pricer.cache_info()
    return [
        f"genai-prices {pricer.catalogue_version} bundled snapshot, loaded in {load_ms:.0f} ms",
        f"cold price() (first lookup, {len(PAIRS)} provider/model pairs): {cold_us:9.1f} µs/call",
        f"warm price() (cached, {rounds * len(PAIRS)} calls):{'':14}{warm_us:9.2f} µs/call",
        f"cache: {info.hits} hits, {info.misses} misses, {info.size} entries",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenbook.pricing.bench")
    parser.add_argument("--warm-calls", type=int, default=200_000)
    args = parser.parse_args(argv)
    for line in run(args.warm_calls):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
