"""``tokenbook budgets``, ``agents`` and ``ledger`` against a real redis-server."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from datetime import UTC, datetime

import pytest
import redis

from tests.support.redis_server import free_port
from tokenbook.cli import main
from tokenbook.ledger.entry import RECORD_FIELDS, LedgerEntry
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import period_of
from tokenbook.testing.stack import executable

KS = Keyspace()


def run(url: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--redis-url", url], environ={"USER": "tester"}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _entry(i: int, booked_at: float, **kw: object) -> LedgerEntry:
    base: dict[str, object] = {
        "booking_id": f"r{i}.a",
        "request_id": f"r{i}",
        "booked_at": booked_at,
        "key_id": "abcdefghijkl",
        "owner": "alice",
        "team": "search",
        "agent": "crawler",
        "workload": "indexing",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "tokens": {"input": 100 + i, "output": 7},
        "cost_usd": 0.001 * (i + 1),
    }
    base.update(kw)
    return LedgerEntry(**base)  # type: ignore[arg-type]


def _xadd(url: str, *entries: LedgerEntry) -> None:
    c = redis.Redis.from_url(url)
    for e in entries:
        f = e.stream_fields()
        c.xadd(KS.ledger, dict(zip(f[::2], f[1::2], strict=True)))
    c.close()


# -- budgets --------------------------------------------------------------------------------


def test_budgets_set_list_unset(redis_url: str) -> None:
    code, out, err = run(
        redis_url,
        "budgets",
        "set",
        "--scope",
        "agent",
        "--id",
        "crawler",
        "--daily-usd",
        "5",
        "--by",
        "tester",
    )
    assert code == 0, err
    assert "agent crawler: daily $5, monthly none" in out
    c = redis.Redis.from_url(redis_url)
    c.set(KS.spend("agent", "crawler", period_of("daily", datetime.now(UTC)).label), 1_250_000)
    c.close()
    code, out, _ = run(redis_url, "budgets", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["SCOPE", "ID", "DAILY_USD", "SPENT_TODAY_USD"]
    assert row.split()[:4] == ["agent", "crawler", "$5", "$1.25"]
    code, out, _ = run(redis_url, "budgets", "list", "--format", "json")
    [b] = json.loads(out)
    assert b["spent_today_usd"] == 1.25
    assert b["updated_by"] == "tester"
    code, out, _ = run(redis_url, "budgets", "unset", "--scope", "agent", "--id", "crawler")
    assert (code, "removed" in out) == (0, True)
    code, out, err = run(redis_url, "budgets", "list")
    assert (code, out) == (0, "")
    assert "no budgets yet" in err


def test_budgets_on_a_key(redis_url: str) -> None:
    code, out, err = run(
        redis_url,
        "keys", "issue", "--owner", "a", "--team", "t", "--agent", "g", "--workload", "w",
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    key_id = json.loads(out)["key_id"]
    code, out, err = run(
        redis_url, "budgets", "set", "--scope", "key", "--id", key_id, "--monthly-usd", "12.5"
    )
    assert code == 0, err
    code, out, _ = run(redis_url, "keys", "show", key_id, "--format", "json")
    assert json.loads(out)["budget_monthly_usd"] == 12.5
    code, out, _ = run(redis_url, "budgets", "list", "--scope", "key", "--format", "json")
    assert [b["id"] for b in json.loads(out)] == [key_id]
    code, _, err = run(
        redis_url, "budgets", "set", "--scope", "key", "--id", "aaaaaaaaaaaa", "--daily-usd", "1"
    )
    assert code == 1
    assert "no key with id aaaaaaaaaaaa" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["budgets", "set", "--scope", "agent", "--id", "x"], "--daily-usd and/or --monthly-usd"),
        (["budgets", "set", "--id", "x", "--daily-usd", "1"], "--scope is missing"),
        (["budgets", "set", "--scope", "team", "--daily-usd", "1"], "--id is missing"),
        (["budgets", "set", "--scope", "team", "--id", "x", "--daily-usd", "-2"], "non-negative"),
        (["budgets", "set", "--scope", "team", "--id", "Bad!", "--daily-usd", "1"], "must match"),
        (["agents", "suspend", "NOT OK"], "must match"),
        (["ledger", "export", "--since", "yesterday"], "not an ISO date"),
        (["ledger", "export", "--since", "2026-02-01", "--until", "2026-01-01"], "before"),
        (["ledger", "tail", "-n", "-1"], "0 or more"),
    ],
)
def test_usage_errors_exit_2_in_one_line(redis_url: str, argv: list[str], needle: str) -> None:
    code, out, err = run(redis_url, *argv)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["budgets", "list"],
        ["budgets", "set", "--scope", "team", "--id", "x", "--daily-usd", "1"],
        ["agents", "suspend", "crawler"],
        ["agents", "list"],
        ["ledger", "tail"],
        ["ledger", "export"],
    ],
)
def test_redis_down_exits_1_in_one_line(argv: list[str]) -> None:
    code, _, err = run(f"redis://127.0.0.1:{free_port()}/0", *argv)
    assert code == 1
    assert "unreachable" in err
    assert len(err.strip().splitlines()) == 1


# -- agents ---------------------------------------------------------------------------------


def test_agents_suspend_list_resume(redis_url: str) -> None:
    code, out, _ = run(
        redis_url, "agents", "suspend", "crawler", "--reason", "runaway  loop", "--by", "tester"
    )
    assert code == 0
    assert "within a second" in out
    code, out, _ = run(redis_url, "agents", "list", "--format", "json")
    [s] = json.loads(out)
    assert (s["agent"], s["by"], s["reason"]) == ("crawler", "tester", "runaway loop")
    code, out, _ = run(redis_url, "agents", "resume", "crawler")
    assert (code, out.strip()) == (0, "resumed agent crawler")
    code, out, _ = run(redis_url, "agents", "resume", "crawler")
    assert "was not suspended" in out


# -- ledger ---------------------------------------------------------------------------------


def test_ledger_tail_jsonl_and_csv(redis_url: str) -> None:
    now = time.time()
    _xadd(redis_url, *(_entry(i, now) for i in range(5)), _entry(5, now, cost_usd=None))
    code, out, err = run(redis_url, "ledger", "tail", "-n", "2")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["request_id"] for r in records] == ["r4", "r5"]
    assert records[0]["tokens"] == {"input": 104, "output": 7}
    assert records[0]["cost_usd"] == pytest.approx(0.005)
    assert "cost_usd" not in records[1]  # unpriced: absent, never 0
    code, out, _ = run(redis_url, "ledger", "tail", "-n", "3", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == list(RECORD_FIELDS)
    assert [r[0] for r in rows[1:]] == ["r3", "r4", "r5"]


def test_ledger_export_selects_on_booking_time(redis_url: str) -> None:
    jan = datetime(2026, 1, 15, tzinfo=UTC).timestamp()
    feb = datetime(2026, 2, 15, tzinfo=UTC).timestamp()
    # Appended in this order; r2 was booked in January but replayed (appended) after r1.
    _xadd(redis_url, _entry(0, jan), _entry(1, feb), _entry(2, jan + 60))
    code, out, err = run(
        redis_url, "ledger", "export", "--since", "2026-01-01", "--until", "2026-02-01"
    )
    assert code == 0, err
    assert [json.loads(x)["request_id"] for x in out.splitlines()] == ["r0", "r2"]
    code, out, _ = run(redis_url, "ledger", "export", "--since", "2026-02-01", "--format", "csv")
    assert [r[0] for r in list(csv.reader(io.StringIO(out)))[1:]] == ["r1"]
    code, out, _ = run(redis_url, "ledger", "export")
    assert len(out.splitlines()) == 3


def test_ledger_tail_follow_prints_new_entries(redis_url: str) -> None:
    proc = subprocess.Popen(
        [
            executable("tokenbook"),
            "ledger",
            "tail",
            "-n",
            "0",
            "--follow",
            "--redis-url",
            redis_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # let it start blocking on XREAD
        _xadd(redis_url, _entry(42, time.time()))
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line)["request_id"] == "r42"
    finally:
        proc.terminate()
        proc.wait(10)
