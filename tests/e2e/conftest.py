"""The end-to-end stack: real redis-server, `tokenbook serve`, real Envoy 1.40, a fake provider.

One stack per test session (starting Envoy and tokenbook takes seconds). Tests isolate themselves
by issuing their own keys and tagging requests with a unique `x-test-id` header.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenbook.testing.stack import Stack, executable

ANTHROPIC_PROVIDER_KEY = "sk-ant-fake-provider-credential"
#: how long a test waits for the meter to book (it books asynchronously, after the response)
BOOKING_TIMEOUT_S = 10.0


def _transports() -> list[str]:
    """Every e2e test runs once per ext_proc transport (`tokenbook serve --transport`);
    TOKENBOOK_E2E_TRANSPORTS=h2 (comma-separated) narrows that while iterating."""
    chosen = os.environ.get("TOKENBOOK_E2E_TRANSPORTS", "grpcio,h2")
    return [t.strip() for t in chosen.split(",") if t.strip()]


@pytest.fixture(scope="session", params=_transports())
def stack(
    tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    transport: str = request.param
    work = tmp_path_factory.mktemp(f"stack-{transport}")
    config = work / "tokenbook.yaml"
    # Credential swap on, with a provider credential configured for anthropic only: the openai
    # route shows the default behaviour (tokenbook key removed, nothing set), the anthropic
    # route shows the swap.
    config.write_text(
        "credential_swap: true\n"
        "credentials:\n  anthropic-prod: {env: FAKE_ANTHROPIC_KEY}\n"
        "provider_credentials:\n  anthropic: anthropic-prod\n"
        "negative_cache_ttl_s: 0.2\n"
    )
    s = Stack(
        workdir=work,
        corpus=corpus_dir,
        serve_args=["--config", str(config), "--transport", transport],
        serve_env={"FAKE_ANTHROPIC_KEY": ANTHROPIC_PROVIDER_KEY},
    )
    s.start()
    yield s
    s.stop()


def tokenbook_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [executable("tokenbook"), *args, "--redis-url", stack.redis_url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def issue_key(
    stack: Stack, owner: str, team: str, agent: str, workload: str, *extra: str
) -> dict[str, str]:
    done = tokenbook_cli(
        stack,
        "keys",
        "issue",
        "--owner",
        owner,
        "--team",
        team,
        "--agent",
        agent,
        "--workload",
        workload,
        "--format",
        "json",
        *extra,
    )
    assert done.returncode == 0, done.stderr
    issued: dict[str, str] = json.loads(done.stdout)
    return issued


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample in exposition text (None when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        body = head[len(name) + 1 : -1]
        pairs = dict(p.split("=", 1) for p in _split_labels(body))
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return None


def samples_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        pairs = dict(p.split("=", 1) for p in _split_labels(head[len(name) + 1 : -1]))
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
            found = True
    return total if found else float("nan")


def _split_labels(body: str) -> list[str]:
    out, cur, quoted, esc = [], "", False, False
    for ch in body:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            cur += ch
            esc = True
        elif ch == '"':
            quoted = not quoted
            cur += ch
        elif ch == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def wait_for_sample(stack: Stack, name: str, **labels: str) -> str:
    """Scrape until `name{labels}` exists (the meter books asynchronously); return the scrape."""
    deadline = time.monotonic() + BOOKING_TIMEOUT_S
    text = ""
    while time.monotonic() < deadline:
        text = stack.scrape()
        if sample(text, name, **labels) is not None:
            # Scrape once more: /metrics is served from another thread and can catch a booking
            # half-way (the tokens already read, the request counter not yet).
            return stack.scrape()
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} never appeared in /metrics")
