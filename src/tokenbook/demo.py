"""`make demo`: the whole stack on this machine, driven by the official SDKs, no provider account.

Starts redis-server, `tokenbook serve`, Envoy (rendered by `tokenbook envoy-config`) and a fake
provider answering with recorded provider responses; issues keys for a few teams, agents and
workloads; sends traffic through the gateway with the `openai` and `anthropic` SDKs for
``--duration`` seconds; then prints what tokenbook booked, and stops everything it started (also
on Ctrl-C).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai

from tokenbook.testing.stack import Stack

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Caller:
    owner: str
    team: str
    agent: str
    workload: str
    provider: str
    fixtures: tuple[str, ...]


CALLERS = (
    Caller(
        "alice",
        "search",
        "crawler",
        "indexing",
        "openai",
        (
            "openai/chat/nonstream_prompt_cache_hit.json",
            "openai/chat/stream_include_usage_reasoning.sse",
        ),
    ),
    Caller(
        "bob",
        "support",
        "triage-bot",
        "tickets",
        "anthropic",
        (
            "anthropic/messages/nonstream_cache_write_and_read.json",
            "anthropic/messages/stream_cache_read.sse",
        ),
    ),
    Caller(
        "carol",
        "research",
        "summariser",
        "papers",
        "openai",
        ("openai/chat/nonstream_o3mini_high_reasoning.json",),
    ),
)


def _issue(stack: Stack, c: Caller) -> str:
    import json
    import subprocess

    from tokenbook.testing.stack import executable

    done = subprocess.run(
        [
            executable("tokenbook"),
            "keys",
            "issue",
            "--owner",
            c.owner,
            "--team",
            c.team,
            "--agent",
            c.agent,
            "--workload",
            c.workload,
            "--format",
            "json",
            "--redis-url",
            stack.redis_url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    key: str = json.loads(done.stdout)["key"]
    return key


def _call(stack: Stack, c: Caller, key: str, fixture: str) -> None:
    headers = {"x-fake-fixture": fixture}
    stream = fixture.endswith(".sse")
    if c.provider == "openai":
        oc = openai.OpenAI(base_url=f"{stack.gateway}/openai/v1", api_key=key, max_retries=0)
        if stream:
            for _ in oc.chat.completions.create(
                model="gpt-5-nano",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            ):
                pass
        else:
            oc.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=headers,
            )
    else:
        ac = anthropic.Anthropic(base_url=f"{stack.gateway}/anthropic", api_key=key, max_retries=0)
        if stream:
            with ac.messages.stream(
                model="claude-3-5-sonnet-20240620",
                max_tokens=256,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=headers,
            ) as s:
                for _ in s.text_stream:
                    pass
        else:
            ac.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=256,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=headers,
            )


def _summary(metrics_text: str) -> list[str]:
    tokens: dict[tuple[str, str], float] = defaultdict(float)
    cost: dict[tuple[str, str], float] = defaultdict(float)
    for line in metrics_text.splitlines():
        for name, table in (
            ("tokenbook_tokens_total{", tokens),
            ("tokenbook_cost_usd_total{", cost),
        ):
            if line.startswith(name):
                labels = dict(
                    part.split("=", 1) for part in line[len(name) : line.rindex("}")].split(",")
                )
                who = (labels["team"].strip('"'), labels["agent"].strip('"'))
                table[who] += float(line.rsplit(" ", 1)[1])
    rows = [f"{'team':<10} {'agent':<12} {'tokens':>10} {'cost USD':>10} {'tokens/$':>10}"]
    for who in sorted(tokens):
        t, usd = tokens[who], cost.get(who, 0.0)
        per = f"{t / usd:,.0f}" if usd else "n/a"
        rows.append(f"{who[0]:<10} {who[1]:<12} {t:>10,.0f} {usd:>10.4f} {per:>10}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of traffic")
    ns = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tokenbook-demo-"))
    stack = Stack(workdir=work, corpus=REPO / "tests" / "corpus")
    print(f"starting redis-server, tokenbook, Envoy and a fake provider (logs in {work}) ...")
    try:
        stack.start()
        print(f"gateway  {stack.gateway}   metrics  {stack.metrics_url}")
        keys = {c: _issue(stack, c) for c in CALLERS}
        print(f"issued {len(keys)} keys; sending traffic for {ns.duration:.0f}s (Ctrl-C stops)")
        rng = random.Random(7)
        sent = failed = 0
        deadline = time.monotonic() + ns.duration
        while time.monotonic() < deadline:
            c = rng.choice(CALLERS)
            try:
                _call(stack, c, keys[c], rng.choice(c.fixtures))
                sent += 1
            except (openai.APIError, anthropic.APIError) as exc:
                failed += 1
                print(f"  request failed: {exc}", file=sys.stderr)
            if sent % 20 == 0:
                print(f"  {sent} requests sent", end="\r", flush=True)
        time.sleep(0.5)  # the meter books asynchronously
        print(f"\n{sent} requests sent, {failed} failed. What tokenbook booked:\n")
        print("\n".join(_summary(stack.scrape())))
        print(f"\nraw metrics were at {stack.metrics_url} (stopped now)")
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        stack.stop()
        print("stopped everything the demo started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
