"""The audit report's four formats: aligned tables, Markdown, CSV and the JSON schema."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenbook.audit.analysis import analyse
from tokenbook.audit.model import SCHEMA, AuditRecord, AuditReport, SourceInfo
from tokenbook.audit.render import (
    CSV_COLUMNS,
    FORMATS,
    SECTIONS,
    render,
    rounded_shares,
    text_table,
)
from tokenbook.pricing import Pricer
from tokenbook.usage.types import TokenUsage

SOURCE = SourceInfo("ledger", "redis://127.0.0.1:6379/0 tokenbook:ledger", "24h", "last 24h")


def _rec(key_id: str, cost: float | None, model: str = "gpt-4o", **kw: str) -> AuditRecord:
    labels = {"owner": f"o-{key_id}", "team": "t", "agent": "a", "workload": "w", **kw}
    return AuditRecord(
        key_id=key_id,
        provider="openai",
        model=model,
        tokens=TokenUsage(input=12_000, cached_input=3000, output=1500),
        cost_usd=cost,
        requests=3,
        **labels,
    )


@pytest.fixture(scope="module")
def report() -> AuditReport:
    # Thirds that do not round to a sum of 100.0 naively (33.3 * 3 = 99.9).
    records = [
        _rec("k1", 1.0),
        _rec("k2", 1.0),
        _rec("k3", 1.0),
        _rec("fp", 0.5, owner="unattributed", workload="unattributed"),
        _rec("k4", None, model="no-such-model"),
    ]
    return analyse(records, Pricer(), source=SOURCE)


def test_json_follows_the_documented_schema(report: AuditReport) -> None:
    text = render(report, "json")
    doc = json.loads(text)
    assert next(iter(doc)) == "schema"
    assert doc["schema"] == SCHEMA
    assert set(doc) == {
        "schema",
        "generated_at",
        "source",
        "catalogue_version",
        "totals",
        "keys",
        "concentration",
        "efficiency",
        "workloads",
        "unattributed",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["generated_at"])
    assert doc["source"] == {
        "kind": "ledger",
        "location": "redis://127.0.0.1:6379/0 tokenbook:ledger",
        "since": "24h",
        "window": "last 24h",
    }
    assert math.fsum(k["share_pct"] for k in doc["keys"]) == pytest.approx(100.0, abs=1e-9)
    assert set(doc["keys"][0]) == {
        "rank",
        "key_id",
        "owner",
        "team",
        "agent",
        "workload",
        "cost_usd",
        "share_pct",
        "cumulative_pct",
        "tokens",
        "unpriced_tokens",
        "requests",
    }
    models = {m["model"]: m for w in doc["workloads"] for m in w["models"]}
    assert models["no-such-model"]["cost_usd"] is None  # unpriced is null, never 0
    assert models["gpt-4o"]["alternatives"]
    assert set(models["gpt-4o"]["alternatives"][0]) == {
        "provider",
        "model",
        "cost_usd",
        "saving_usd",
        "saving_pct",
    }
    band = doc["efficiency"][0]["band"]
    assert set(band) == {"kind", "low", "high", "keys", "fence_low", "fence_high"}
    assert doc["unattributed"]["keys"][0]["reason"] == "unknown_key"
    assert doc["totals"]["unpriced_tokens"] == 16_500


def test_table_has_aligned_columns_dollars_and_percentages(report: AuditReport) -> None:
    text = render(report, "table")
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#  key_id"))
    rule = lines[header + 1]
    assert set(rule) <= {"-", " "}
    rows = lines[header + 2 : header + 2 + len(report.keys)]
    # every column starts where the header's column starts
    starts = [m.start() for m in re.finditer(r"-+", rule)]
    for row in rows:
        for start in starts[1:]:
            assert row[start - 2 : start] == "  ", (row, start)
    # right-aligned amounts end at the same column
    spend_col = lines[header].index("spend") + len("spend")
    for row in rows:
        cell = row[:spend_col].rsplit("  ", 1)[-1].strip()
        assert re.fullmatch(r"\$\d[\d,]*\.\d{4}|unpriced", cell), row
    shares = [float(m) for m in re.findall(r"(\d+\.\d) %\s+\d+\.\d %", "\n".join(rows))]
    assert len(shares) == len(report.keys)
    assert round(sum(shares), 1) == 100.0  # largest-remainder rounding, not 99.9
    assert report.concentration.sentence in text
    assert "These 2 keys are half the bill" in text
    assert "unknown to the registry" in text
    assert "  -> " in text  # cheaper candidates under gpt-4o


def test_table_top_limits_rows_but_says_so(report: AuditReport) -> None:
    text = render(report, "table", top=2)
    assert "... and 3 more keys (--top 0 shows all)." in text
    assert "k4" not in text.split("2. Tokens per dollar")[0]


def test_markdown_tables_are_well_formed(report: AuditReport) -> None:
    text = render(report, "markdown")
    assert text.startswith("# tokenbook audit\n")
    for title in ("## 1. Keys by spend", "## 4. Spend lacking attribution"):
        assert title in text
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert table_lines
    for line in table_lines:
        assert line.endswith("|")
    # each table's rows have as many cells as its header
    blocks = re.split(r"\n(?!\|)", text)
    for block in blocks:
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            widths = {len(re.split(r"(?<!\\)\|", r)) for r in rows}
            assert len(widths) == 1, rows


def test_csv_has_one_block_per_section_with_its_header(report: AuditReport) -> None:
    text = render(report, "csv")
    blocks = text.strip("\n").split("\n\n")
    assert len(blocks) == len(SECTIONS)
    for name, block in zip(SECTIONS, blocks, strict=True):
        rows = list(csv.reader(io.StringIO(block)))
        assert rows[0] == ["section", *CSV_COLUMNS[name]]
        assert all(r[0] == name for r in rows[1:])
        assert all(len(r) == len(rows[0]) for r in rows)
    keys = list(csv.DictReader(io.StringIO(blocks[0])))
    assert math.fsum(float(k["share_pct"]) for k in keys) == pytest.approx(100.0, abs=1e-9)
    models = list(csv.DictReader(io.StringIO(blocks[2])))
    unpriced = next(m for m in models if m["model"] == "no-such-model")
    assert unpriced["cost_usd"] == ""  # empty, never 0


def test_sections_can_be_chosen(report: AuditReport) -> None:
    only = render(report, "csv", sections=("unattributed",))
    rows = list(csv.reader(io.StringIO(only)))
    assert rows[0][0] == "section"
    assert {r[0] for r in rows[1:]} == {"unattributed"}
    table = render(report, "table", sections=("workloads",))
    assert "3. Spend by model" in table
    assert "1. Keys by spend" not in table


def test_every_format_renders_an_empty_report() -> None:
    empty = analyse([], Pricer(), source=SOURCE)
    for fmt in FORMATS:
        assert render(empty, fmt)
    assert "No usage in this window." in render(empty, "table")
    assert json.loads(render(empty, "json"))["keys"] == []


def test_unknown_format_is_refused(report: AuditReport) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render(report, "yaml")


def test_text_table_pads_to_the_widest_cell() -> None:
    lines = text_table(["a", "bb"], [["xxx", "1"], ["y", "22"]], "lr")
    assert lines == ["a    bb", "---  --", "xxx   1", "y    22"]


@given(st.lists(st.floats(min_value=0.001, max_value=1e6, allow_nan=False), min_size=1))
def test_rounded_shares_sum_to_exactly_100(costs: list[float]) -> None:
    total = math.fsum(costs)
    shares = [100 * c / total for c in costs]
    rounded = rounded_shares(shares)
    assert round(math.fsum(rounded), 6) == 100.0
    for exact, shown in zip(shares, rounded, strict=True):
        assert abs(exact - shown) < 0.1 + 1e-9
