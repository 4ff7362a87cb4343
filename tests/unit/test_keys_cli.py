"""``tokenbook keys …`` through `configure_parser` + `run`, against a real redis-server."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import free_port
from tokenbook.attribution.command import configure_parser, run
from tokenbook.attribution.keys import hash_key, parse_key_id

ATTRIBUTION = ["--owner", "alice", "--team", "search", "--agent", "crawler", "--workload", "index"]


@dataclass
class Result:
    code: int
    out: str
    err: str


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenbook keys")
    configure_parser(p)
    return p


def keys(
    *argv: str, stdin: str = "", env: Mapping[str, str] | None = None, url: str | None = None
) -> Result:
    args = list(argv)
    if url is not None:
        args += ["--redis-url", url]
    ns = parser().parse_args(args)
    out, err = io.StringIO(), io.StringIO()
    code = run(ns, out, err, stdin=io.StringIO(stdin), env=env or {"USER": "tester"})
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def db(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def issue(url: str, *extra: str) -> dict[str, str]:
    result = keys("issue", *ATTRIBUTION, *extra, "--format", "json", url=url)
    assert result.code == 0, result.err
    issued: dict[str, str] = json.loads(result.out)
    return issued


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


def unreachable_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def test_issue_json(redis_url: str, db: redis.Redis) -> None:
    result = keys(
        "issue", *ATTRIBUTION, "--budget-daily-usd", "25", "--expires", "2099-01-31",
        "--format", "json", url=redis_url,
    )  # fmt: skip
    assert result.code == 0, result.err
    issued = json.loads(result.out)
    assert set(issued) == {"key", "key_id"}
    assert parse_key_id(issued["key"]) == issued["key_id"]
    stored = db.hgetall(f"tokenbook:key:{hash_key(issued['key'])}")
    assert stored[b"owner"] == b"alice"
    assert stored[b"created_by"] == b"tester"
    assert stored[b"budget_daily_usd"] == b"25.0"
    assert stored[b"expires_at"] == b"2099-01-31T00:00:00Z"
    assert "shown only once" in result.err


def test_issue_text_prints_the_key_once(redis_url: str) -> None:
    result = keys("issue", *ATTRIBUTION, "--by", "ops-bot", url=redis_url)
    assert result.code == 0, result.err
    key = next(w for w in result.out.split() if w.startswith("tb_"))
    assert result.out.count(key) == 1
    assert f"key id: {parse_key_id(key)}" in result.out
    assert "owner=alice team=search agent=crawler workload=index" in result.out
    assert "cannot be recovered" in one_line(result.err)


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (("--team", None), "--team is missing"),
        (("--owner", "Alice"), "--owner 'Alice' is malformed"),
        (("--workload", "unattributed"), "reserved"),
    ],
)
def test_bad_attribution_is_a_usage_error_and_writes_nothing(
    redis_url: str, db: redis.Redis, change: tuple[str, str | None], word: str
) -> None:
    flag, value = change
    args = list(ATTRIBUTION)
    i = args.index(flag)
    if value is None:
        del args[i : i + 2]
    else:
        args[i + 1] = value
    result = keys("issue", *args, url=redis_url)
    assert result.code == 2
    assert word in one_line(result.err)
    assert result.out == ""
    assert db.dbsize() == 0
    # Validation happens before connecting: an unreachable Redis changes nothing.
    assert keys("issue", *args, url=unreachable_url()).code == 2


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        (["--budget-daily-usd", "lots"], "--budget-daily-usd"),
        (["--budget-monthly-usd", "-5"], "--budget-monthly-usd"),
        (["--expires", "2001-01-01"], "in the past"),
        (["--expires", "next tuesday"], "not an ISO date"),
        (["--upstream-credential-ref", "a b"], "--upstream-credential-ref"),
        (["--redis-url", "http://localhost"], "--redis-url"),
    ],
)
def test_bad_options_are_usage_errors(
    redis_url: str, db: redis.Redis, extra: list[str], word: str
) -> None:
    url = None if "--redis-url" in extra else redis_url
    result = keys("issue", *ATTRIBUTION, *extra, url=url)
    assert result.code == 2
    assert word in one_line(result.err)
    assert db.dbsize() == 0


def test_unreachable_redis_is_an_operational_error() -> None:
    url = unreachable_url()
    result = keys("issue", *ATTRIBUTION, url=url)
    assert result.code == 1
    line = one_line(result.err)
    assert line.startswith("tokenbook keys issue: ")
    assert url.removesuffix("/0") in line
    assert "start it" in line
    assert result.out == ""
    for verb in (["list"], ["show", "abcdefghijk2"], ["revoke", "abcdefghijk2"], ["audit"]):
        r = keys(*verb, url=url)
        assert r.code == 1
        one_line(r.err)


def test_env_supplies_url_and_prefix(redis_url: str, db: redis.Redis) -> None:
    env = {"TOKENBOOK_REDIS_URL": redis_url, "TOKENBOOK_REDIS_PREFIX": "tb2:", "USER": "envuser"}
    result = keys("issue", *ATTRIBUTION, "--format", "json", env=env)
    assert result.code == 0, result.err
    key = json.loads(result.out)["key"]
    assert db.hget(f"tb2:key:{hash_key(key)}", "created_by") == b"envuser"


def test_list_never_prints_secrets(redis_url: str) -> None:
    issued = [issue(redis_url), issue(redis_url, "--expires", "2099-12-31T23:00:00+02:00")]
    for fmt in ("table", "json"):
        result = keys("list", "--format", fmt, url=redis_url)
        assert result.code == 0, result.err
        for item in issued:
            assert item["key_id"] in result.out
            assert item["key"] not in result.out
            assert item["key"][16:] not in result.out  # the secret alone
            assert hash_key(item["key"]) not in result.out
    rows = json.loads(keys("list", "--format", "json", url=redis_url).out)
    assert {r["key_id"] for r in rows} == {i["key_id"] for i in issued}
    assert {r["expires_at"] for r in rows} == {None, "2099-12-31T21:00:00Z"}
    table = keys("list", url=redis_url).out.splitlines()
    assert table[0].split()[:3] == ["KEY_ID", "KIND", "STATE"]
    assert len(table) == 3


def test_show_and_revoke(redis_url: str) -> None:
    item = issue(redis_url)
    shown = keys("show", item["key_id"], url=redis_url)
    assert shown.code == 0
    assert "alice" in shown.out
    assert item["key"] not in shown.out

    revoked = keys("revoke", item["key_id"], "--by", "secops", url=redis_url)
    assert revoked.code == 0, revoked.err
    assert item["key_id"] in revoked.out
    after = json.loads(keys("show", item["key_id"], "--format", "json", url=redis_url).out)
    assert after["status"] == "revoked"
    assert after["state"] == "revoked"
    assert after["revoked_by"] == "secops"


def test_show_and_revoke_errors(redis_url: str) -> None:
    missing = keys("show", "abcdefghijk2", url=redis_url)
    assert missing.code == 1
    assert "no key with id" in one_line(missing.err)
    assert keys("revoke", "abcdefghijk2", url=redis_url).code == 1
    bad = keys("show", "not-an-id", url=redis_url)
    assert bad.code == 2
    assert "not a key id" in one_line(bad.err)


def test_import_reads_the_key_from_stdin_and_refuses_duplicates(redis_url: str) -> None:
    args = ["import", "--provider", "openai", *ATTRIBUTION, "--format", "json"]
    result = keys(*args, stdin="sk-proj-abc123\n", url=redis_url)
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert record["kind"] == "imported"
    assert record["provider"] == "openai"
    assert "sk-proj-abc123" not in result.out

    again = keys(*args, stdin="sk-proj-abc123", url=redis_url)
    assert again.code == 1
    assert f"already registered as {record['key_id']}" in one_line(again.err)


def test_import_from_key_file(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("sk-ant-api03-xyz\n")
    result = keys(
        "import", "--provider", "anthropic", *ATTRIBUTION, "--key-file", str(path), url=redis_url
    )
    assert result.code == 0, result.err
    assert "imported anthropic key" in result.out


@pytest.mark.parametrize(
    ("argv", "stdin", "word"),
    [
        (["--provider", "openai"], "", "no provider key"),
        (["--provider", "openai"], "one\ntwo\n", "exactly one"),
        (["--provider", "openai"], "tb_abcdefghijk2_" + "a" * 43, "tokenbook key"),
        ([], "sk-1", "--provider is missing"),
        (["--provider", "Open AI"], "sk-1", "provider"),
        (["--provider", "openai", "--key-file", "/nonexistent/key"], "", "cannot read"),
    ],
)
def test_import_usage_errors(
    redis_url: str, db: redis.Redis, argv: list[str], stdin: str, word: str
) -> None:
    result = keys("import", *argv, *ATTRIBUTION, stdin=stdin, url=redis_url)
    assert result.code == 2
    assert word in one_line(result.err)
    assert db.dbsize() == 0


def test_keys_import_takes_no_key_argument() -> None:
    # The provider key must never be on the command line (visible in ps).
    with pytest.raises(SystemExit):
        parser().parse_args(["import", "--provider", "openai", "sk-on-argv"])


def test_audit(redis_url: str, db: redis.Redis) -> None:
    healthy = issue(redis_url)
    revoked = issue(redis_url)
    assert keys("revoke", revoked["key_id"], url=redis_url).code == 0
    broken = issue(redis_url)
    db.hdel(f"tokenbook:key:{hash_key(broken['key'])}", "owner")  # "written by hand"
    db.set("tokenbook:keyid:zzzzzzzzzzzz", "0" * 64)  # index pointing at nothing

    result = keys("audit", "--format", "json", url=redis_url)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    found = {(f["subject"], f["problem"]) for f in report["findings"]}
    assert (broken["key_id"], "malformed") in found
    assert (revoked["key_id"], "revoked") in found
    assert ("zzzzzzzzzzzz", "dangling_index") in found
    assert not any(subject == healthy["key_id"] for subject, _ in found)
    assert any("missing owner" in f["detail"] for f in report["findings"])
    assert any("TODO" in item for item in report["not_checked"])
    assert report["entries"] == 3

    table = keys("audit", url=redis_url)
    assert table.out.splitlines()[0].split() == ["SUBJECT", "PROBLEM", "DETAIL"]
    assert "not checked" in table.err

    listed = keys("list", url=redis_url)
    assert broken["key_id"] not in listed.out
    assert "1 malformed" in listed.err
    shown = keys("show", broken["key_id"], url=redis_url)
    assert shown.code == 1
    assert "malformed" in one_line(shown.err)
