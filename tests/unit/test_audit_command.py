"""`tokenbook audit` through the real command line: options, exit codes, the ledger source."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
import redis

from tests.support.redis_server import free_port
from tokenbook.audit.command import parse_since
from tokenbook.cli import main
from tokenbook.ledger.entry import LedgerEntry


def audit(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["audit", *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _book(client: redis.Redis, key_id: str, model: str, cost: float, n: int) -> None:
    for i in range(n):
        entry = LedgerEntry(
            booking_id=f"{key_id}-{i}",
            request_id=f"{key_id}-{i}",
            booked_at=time.time(),
            key_id=key_id,
            owner=f"owner-{key_id}",
            team="search",
            agent="crawler",
            workload="indexing",
            provider="openai",
            model=model,
            tokens={"input": 2000, "output": 400},
            cost_usd=cost,
        )
        fields = entry.stream_fields()
        client.xadd("tokenbook:ledger", dict(zip(fields[::2], fields[1::2], strict=True)))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), ("2w", 1209600)],
)
def test_parse_since(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


def test_ledger_report_through_the_cli(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(redis_url)
    _book(client, "big", "gpt-4o", 0.5, 6)
    _book(client, "small", "gpt-4o-mini", 0.01, 3)
    monkeypatch.setenv("TOKENBOOK_REDIS_URL", redis_url)  # the default source: the ledger
    code, out, err = audit("--format", "json", "--since", "1h")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["source"]["kind"] == "ledger"
    assert doc["source"]["since"] == "1h"
    assert [k["key_id"] for k in doc["keys"]] == ["big", "small"]
    assert doc["keys"][0]["cost_usd"] == pytest.approx(3.0)
    assert doc["keys"][0]["requests"] == 6
    assert sum(k["share_pct"] for k in doc["keys"]) == pytest.approx(100.0)
    gpt4o = next(m for m in doc["workloads"][0]["models"] if m["model"] == "gpt-4o")
    assert gpt4o["alternatives"]

    code, out, _ = audit("--redis-url", redis_url, "--format", "csv", "--section", "keys")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["key_id"] for r in rows] == ["big", "small"]

    code, out, _ = audit("--redis-url", redis_url)  # the default format: a table
    assert code == 0
    assert "This key is half the bill" in out
    assert "$3.0000" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-url", "http://x/metrics", "--since", "1h"], "--since does not apply"),
        (["--since", "5x"], "expected a duration"),
        (["--since", "0s"], "at least 1s"),
        (["--prometheus", "prom:9090"], "expected an http(s):// URL"),
        (["--prices-file", "/nonexistent/prices.yaml"], "cannot read the price file"),
        (["--prometheus", "http://p", "--metrics-url", "http://m"], "not allowed with"),
        (["--format", "yaml"], "invalid choice"),
        (["--top", "-1"], "negative"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = audit(*args)
    err += capsys.readouterr().err  # argparse's own errors go to sys.stderr
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_unreachable_source_exits_1_with_one_line() -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    code, out, err = audit("--redis-url", down)
    assert (code, out) == (1, "")
    assert err.startswith("tokenbook audit: cannot read the ledger")
    assert len(err.strip().splitlines()) == 1
    code, _, err = audit("--prometheus", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "cannot reach Prometheus" in err


def test_bad_prices_file_is_a_usage_error(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "prices.yaml"  # type: ignore[operator]
    path.write_text("models:\n  - provider: openai\n    model: x\n    input: -1\n    output: 1\n")
    code, _, err = audit("--prices-file", str(path), "--metrics-url", "http://127.0.0.1:1/")
    assert code == 2
    assert "prices.yaml" in err
