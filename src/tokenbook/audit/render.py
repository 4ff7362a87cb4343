"""The audit report as a terminal table, Markdown, CSV or JSON.

- ``table`` and ``markdown`` are for people: aligned columns, dollars with 4 decimals, tokens
  with thousands separators, percentages with one decimal rounded so that a column of shares
  adds up to exactly 100.0 % (largest remainder). ``top`` limits the key rows (0 = all); an
  outlier is always shown.
- ``csv`` is for spreadsheets: one block per section, each with its header row, blocks separated
  by a blank line; the first column of every row names the section, so one section can be
  filtered out of the whole (or chosen with ``sections``). Numbers are unrounded.
- ``json`` is the documented schema of `tokenbook.audit.model` (always the whole report).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from tokenbook.audit.model import (
    FLAG_HIGH,
    FLAG_LOW,
    REASON_LABEL_OVERFLOW,
    REASON_MISSING_LABEL,
    REASON_UNKNOWN_KEY,
    AuditReport,
    KeyEfficiency,
)
from tokenbook.usage.types import TOKEN_TYPES

FORMATS = ("table", "json", "csv", "markdown")
SECTIONS = ("keys", "efficiency", "workloads", "unattributed")

_TITLES = {
    "keys": "1. Keys by spend",
    "efficiency": "2. Tokens per dollar, against the band of the key's workload",
    "workloads": "3. Spend by model in each workload, and cheaper candidates",
    "unattributed": "4. Spend lacking attribution",
}
_FLAG_TEXT = {
    FLAG_LOW: "LOW: far fewer tokens per $ than its workload",
    FLAG_HIGH: "HIGH: far more tokens per $ than its workload",
}
_REASON_TEXT = {
    REASON_UNKNOWN_KEY: "key unknown to the registry",
    REASON_LABEL_OVERFLOW: "a label past its bound ('other')",
    REASON_MISSING_LABEL: "a label not recorded",
}
_TYPE_SHORT = {
    "input": "input",
    "cached_input": "cached",
    "cache_write": "cache write",
    "output": "output",
    "reasoning": "reasoning",
}


# -- number formats ---------------------------------------------------------------------------


def usd(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:,.4f}"


def count(value: float) -> str:
    return f"{value:,.0f}"


def pct(value: float) -> str:
    return f"{value:.1f} %"


def rounded_shares(values: Sequence[float], decimals: int = 1) -> list[float]:
    """``values`` (percentages summing to 100) rounded so that the rounded ones sum to 100.

    Largest remainder: floor every value, then give the missing units to the largest
    remainders. Values that do not sum to about 100 (no spend) are rounded plainly.
    """
    if not values or abs(sum(values) - 100.0) > 1e-6:
        return [round(v, decimals) for v in values]
    scale = 10**decimals
    scaled = [v * scale for v in values]
    floors = [math.floor(s + 1e-9) for s in scaled]
    missing = 100 * scale - sum(floors)
    order = sorted(range(len(values)), key=lambda i: (-(scaled[i] - floors[i]), i))
    for i in order[: max(missing, 0)]:
        floors[i] += 1
    return [f / scale for f in floors]


def cumulative(shares: Sequence[float]) -> list[float]:
    out: list[float] = []
    running = 0
    for share in shares:
        running += round(share * 10)
        out.append(running / 10)
    return out


def mix(tokens: Mapping[str, int]) -> str:
    """A token mix in words: ``input 70.0 %, cached 10.0 %, output 20.0 %``."""
    total = sum(tokens.values())
    if total <= 0:
        return "no tokens"
    present = [t for t in TOKEN_TYPES if tokens.get(t)]
    shares = rounded_shares([100.0 * tokens[t] / total for t in present])
    return ", ".join(f"{_TYPE_SHORT[t]} {pct(s)}" for t, s in zip(present, shares, strict=True))


# -- aligned text tables ----------------------------------------------------------------------


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Columns padded to their widest cell; ``align`` holds ``l`` or ``r`` per column."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    rule = ["---:" if a == "r" else "---" for a in align]
    return [
        "| " + " | ".join(map(esc, headers)) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(map(esc, r)) + " |" for r in rows),
    ]


# -- the sections as blocks (shared by table and markdown) -----------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: str  # "l" or "r" per column


@dataclass(frozen=True, slots=True)
class Heading:
    """A sub-heading inside a section (a workload)."""

    text: str


Block = str | Heading | Table  # a str is a paragraph


def _shown_keys(report: AuditReport, top: int) -> set[str]:
    ranked = report.keys if top <= 0 else report.keys[:top]
    shown = {k.key_id for k in ranked}
    shown |= {e.key_id for e in report.efficiency if e.flag is not None}
    return shown


def _keys_section(report: AuditReport, top: int) -> list[Block]:
    if not report.keys:
        return ["No usage in this window."]
    shares = rounded_shares([k.share_pct for k in report.keys])
    cum = cumulative(shares)
    shown = report.keys if top <= 0 else report.keys[:top]
    with_unpriced = any(k.unpriced_tokens for k in report.keys)
    rows: list[list[str]] = []
    for i, k in enumerate(shown):
        # A key none of whose usage could be priced has no spend to show, not $0.
        spend = "unpriced" if k.cost_usd == 0 and k.unpriced_tokens == k.tokens else usd(k.cost_usd)
        row = [str(k.rank), k.key_id, k.owner, k.team, k.agent, k.workload, spend]
        row += [pct(shares[i]), pct(cum[i]), count(k.tokens)]
        if with_unpriced:
            row.append(count(k.unpriced_tokens))
        rows.append([*row, count(k.requests)])
    headers = ["#", "key_id", "owner", "team", "agent", "workload"]
    headers += ["spend", "share", "cumulative", "tokens"]
    headers += ["unpriced tokens", "requests"] if with_unpriced else ["requests"]
    align = "rlllllrrrr" + "r" * (2 if with_unpriced else 1)
    blocks: list[Block] = [report.concentration.sentence, Table(headers, rows, align)]
    hidden = len(report.keys) - len(shown)
    if hidden > 0:
        blocks.append(f"... and {hidden} more keys (--top 0 shows all).")
    return blocks


def _band_text(e: KeyEfficiency) -> str:
    b = e.band
    keys = "1 key" if b.keys == 1 else f"{b.keys} keys"
    return f"{count(b.low)} - {count(b.high)} ({b.kind} of {keys})"


def _efficiency_section(report: AuditReport, top: int) -> list[Block]:
    if not report.efficiency:
        return ["No key has priced spend."]
    shown = _shown_keys(report, top)
    rows = [
        [
            e.workload,
            e.key_id,
            count(e.tokens_per_usd),
            _band_text(e),
            _FLAG_TEXT.get(e.flag or "", ""),
        ]
        for e in report.efficiency
        if e.key_id in shown
    ]
    flagged = sum(1 for e in report.efficiency if e.flag is not None)
    prose = (
        f"{flagged} outlier{'' if flagged == 1 else 's'}. A key is flagged when its tokens per $ "
        "lie more than 1.5 interquartile ranges (and at least 2x) outside its workload's p25-p75 "
        "band, on a log scale; a workload with fewer than 4 priced keys shows its min-max and "
        "flags nothing."
    )
    headers = ["workload", "key_id", "tokens per $", "workload band", "flag"]
    return [prose, Table(headers, rows, "llrll")]


def _workloads_section(report: AuditReport) -> list[Block]:
    if not report.workloads:
        return ["No usage in this window."]
    blocks: list[Block] = [
        "Cheaper candidates: list prices (genai-prices "
        f"{report.catalogue_version}) for the same requests, each priced at the average request "
        "size; whether a cheaper model does the job is for you to judge."
    ]
    shares = rounded_shares([w.share_pct for w in report.workloads])
    for w, share in zip(report.workloads, shares, strict=True):
        priced = any(m.cost_usd is not None for m in w.models)
        spend = f"{usd(w.cost_usd)} ({pct(share)} of spend)" if priced else "unpriced"
        blocks.append(Heading(f"{w.workload}: {spend}; mix {mix(w.tokens)}"))
        rows: list[list[str]] = []
        for m in w.models:
            tokens = count(sum(m.tokens.values()))
            rows.append([m.provider, m.model, count(m.requests), tokens, usd(m.cost_usd), ""])
            for a in m.alternatives:
                elsewhere = f" ({a.provider})" if a.provider != m.provider else ""
                saving = f"saves {usd(a.saving_usd)} ({pct(a.saving_pct)})"
                rows.append(["", f"  -> {a.model}{elsewhere}", "", "", usd(a.cost_usd), saving])
        headers = ["provider", "model / cheaper candidate", "requests", "tokens", "spend", "saving"]
        blocks.append(Table(headers, rows, "llrrrl"))
    return blocks


def _unattributed_section(report: AuditReport) -> list[Block]:
    u = report.unattributed
    if not u.keys:
        return ["All spend is attributed."]
    plural = "" if len(u.keys) == 1 else "s"
    prose = (
        f"{usd(u.cost_usd)} ({pct(u.share_pct)} of spend, {count(u.tokens)} tokens) lacks "
        f"attribution, on {len(u.keys)} key{plural}."
    )
    rows = [
        [
            k.key_id,
            _REASON_TEXT.get(k.reason, k.reason),
            usd(k.cost_usd),
            count(k.tokens),
            count(k.requests),
        ]
        for k in u.keys
    ]
    return [prose, Table(["key_id", "reason", "spend", "tokens", "requests"], rows, "llrrr")]


def _sections(
    report: AuditReport, top: int, sections: Sequence[str]
) -> list[tuple[str, list[Block]]]:
    build: dict[str, Callable[[], list[Block]]] = {
        "keys": lambda: _keys_section(report, top),
        "efficiency": lambda: _efficiency_section(report, top),
        "workloads": lambda: _workloads_section(report),
        "unattributed": lambda: _unattributed_section(report),
    }
    return [(name, build[name]()) for name in sections]


def _headline(report: AuditReport) -> list[str]:
    t = report.totals
    lines = [
        f"Source: {report.source.kind} ({report.source.location}), {report.source.window}.",
        f"Total: {usd(t.cost_usd)} for {count(t.tokens)} tokens, {count(t.requests)} requests, "
        f"{t.keys} keys.",
    ]
    if t.unpriced_tokens:
        lines.append(
            f"{count(t.unpriced_tokens)} tokens could not be priced: they are counted, not costed."
        )
    return lines


# -- the formats ------------------------------------------------------------------------------


def to_table(report: AuditReport, *, top: int = 20, sections: Sequence[str] = SECTIONS) -> str:
    out = ["tokenbook audit", *_headline(report)]
    for name, blocks in _sections(report, top, sections):
        title = _TITLES[name]
        out += ["", title, "=" * len(title)]
        for block in blocks:
            if isinstance(block, Table):
                out += ["", *text_table(block.headers, block.rows, block.align)]
            elif isinstance(block, Heading):
                out += ["", block.text]
            else:
                out.append(block)
    return "\n".join(out) + "\n"


def to_markdown(report: AuditReport, *, top: int = 20, sections: Sequence[str] = SECTIONS) -> str:
    out = ["# tokenbook audit", "", *(f"{line}  " for line in _headline(report))]
    for name, blocks in _sections(report, top, sections):
        out += ["", f"## {_TITLES[name]}"]
        for block in blocks:
            out.append("")
            if isinstance(block, Table):
                out += markdown_table(block.headers, block.rows, block.align)
            elif isinstance(block, Heading):
                out.append(f"### {block.text}")
            else:
                out.append(block)
    return "\n".join(out) + "\n"


def to_json(report: AuditReport) -> str:
    doc = asdict(report)
    schema = doc.pop("schema")
    return json.dumps({"schema": schema, **doc}, indent=2, allow_nan=False) + "\n"


CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "keys": (
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
    ),
    "efficiency": (
        "key_id",
        "workload",
        "tokens_per_usd",
        "band_kind",
        "band_low",
        "band_high",
        "band_keys",
        "fence_low",
        "fence_high",
        "flag",
    ),
    "workloads": (
        "workload",
        "provider",
        "model",
        "requests",
        "tokens",
        "cost_usd",
        "candidate_provider",
        "candidate_model",
        "candidate_cost_usd",
        "saving_usd",
        "saving_pct",
    ),
    "unattributed": ("key_id", "reason", "cost_usd", "tokens", "requests"),
}


def _csv_rows(report: AuditReport, section: str) -> list[dict[str, object]]:
    if section == "keys":
        return [asdict(k) for k in report.keys]
    if section == "efficiency":
        return [
            {
                "key_id": e.key_id,
                "workload": e.workload,
                "tokens_per_usd": e.tokens_per_usd,
                "band_kind": e.band.kind,
                "band_low": e.band.low,
                "band_high": e.band.high,
                "band_keys": e.band.keys,
                "fence_low": e.band.fence_low,
                "fence_high": e.band.fence_high,
                "flag": e.flag,
            }
            for e in report.efficiency
        ]
    if section == "workloads":
        rows: list[dict[str, object]] = []
        for w in report.workloads:
            for m in w.models:
                base: dict[str, object] = {
                    "workload": w.workload,
                    "provider": m.provider,
                    "model": m.model,
                    "requests": m.requests,
                    "tokens": sum(m.tokens.values()),
                    "cost_usd": m.cost_usd,
                }
                rows.append(base)
                rows.extend(
                    {
                        **base,
                        "candidate_provider": a.provider,
                        "candidate_model": a.model,
                        "candidate_cost_usd": a.cost_usd,
                        "saving_usd": a.saving_usd,
                        "saving_pct": a.saving_pct,
                    }
                    for a in m.alternatives
                )
        return rows
    return [asdict(k) for k in report.unattributed.keys]


def to_csv(report: AuditReport, *, sections: Sequence[str] = SECTIONS) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for i, name in enumerate(sections):
        if i:
            buf.write("\n")
        columns = CSV_COLUMNS[name]
        writer.writerow(["section", *columns])
        for row in _csv_rows(report, name):
            # None (unpriced, no fence, no flag) is an empty cell, never 0.
            writer.writerow([name, *("" if row.get(c) is None else row[c] for c in columns)])
    return buf.getvalue()


def render(
    report: AuditReport, fmt: str, *, top: int = 20, sections: Sequence[str] = SECTIONS
) -> str:
    """The report in ``fmt`` (one of `FORMATS`)."""
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report, sections=sections)
    if fmt == "markdown":
        return to_markdown(report, top=top, sections=sections)
    if fmt == "table":
        return to_table(report, top=top, sections=sections)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
