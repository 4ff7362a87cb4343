"""Summaries of the bench's raw runs: medians with min-max, ratios within a pass, tables."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Run = Mapping[str, Any]


def spread(values: Iterable[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt(s: Mapping[str, float] | None, digits: int = 0, *, ranges: bool = True) -> str:
    if s is None:
        return "–"
    med = f"{s['median']:,.{digits}f}"
    if not ranges or s["n"] < 2:
        return med
    return f"{med} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (readable in a terminal too)."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    body = [
        "| "
        + " | ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        + " |"
        for r in rows
    ]
    return "\n".join([line, sep, *body])


def summarise_load(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """workload -> setup -> metric -> spread, over the passes."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        out.setdefault(run["workload"], {}).setdefault(run["setup"], []).append(run)
    summary: dict[str, dict[str, Any]] = {}
    for workload, by_setup in out.items():
        summary[workload] = {}
        for setup, rs in by_setup.items():
            summary[workload][setup] = {
                key: spread(r.get(key) for r in rs)
                for key in (
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "envoy_cpu_us",
                    "extproc_cpu_us",
                    "total_cpu_us",
                    "error_share",
                    "steal_share",
                    "lost",
                    "booked_ok",
                    "booked_other",
                    "requests",
                )
            }
    return summary


def ratios(runs: Sequence[Run], pairs: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Per workload and (label, numerator setup, denominator setup): ratios within each pass."""
    index = {(r["pass"], r["workload"], r["setup"]): r for r in runs}
    workloads = sorted({r["workload"] for r in runs}, key=_workload_order)
    passes = sorted({r["pass"] for r in runs})
    out: list[dict[str, Any]] = []
    for workload in workloads:
        for label, num, den in pairs:
            per: dict[str, list[float]] = {}
            for p in passes:
                a, b = index.get((p, workload, num)), index.get((p, workload, den))
                if a is None or b is None:
                    continue
                for key in ("extproc_cpu_us", "total_cpu_us", "rps", "p50_ms", "p99_ms"):
                    x, y = a.get(key), b.get(key)
                    if x is not None and y:
                        per.setdefault(key, []).append(x / y)
            if per:
                out.append(
                    {
                        "workload": workload,
                        "ratio": label,
                        **{k: spread(v) for k, v in per.items()},
                    }
                )
    return out


def _workload_order(name: str) -> tuple[int, str]:
    order = ["json_c1", "json_c32", "sse_c32", "stream_c32"]
    return (order.index(name) if name in order else len(order), name)


def load_table(summary: Mapping[str, Mapping[str, Any]], setups: Sequence[str]) -> str:
    rows = []
    for workload in sorted(summary, key=_workload_order):
        for setup in setups:
            s = summary[workload].get(setup)
            if s is None:
                continue
            rows.append(
                [
                    workload,
                    setup,
                    fmt(s["rps"]),
                    fmt(s["p50_ms"], 2, ranges=False),
                    fmt(s["p99_ms"], 2, ranges=False),
                    fmt(s["envoy_cpu_us"]),
                    fmt(s["extproc_cpu_us"]),
                    _pct(s["error_share"]),
                    _pct(s["steal_share"]),
                ]
            )
    return table(
        [
            "workload",
            "setup",
            "req/s median (min–max)",
            "p50 ms",
            "p99 ms",
            "Envoy CPU µs/req",
            "ext_proc CPU µs/req",
            "errors",
            "steal",
        ],
        rows,
    )


def ratio_table(rows_in: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            r["workload"],
            r["ratio"],
            fmt(r.get("extproc_cpu_us"), 2),
            fmt(r.get("total_cpu_us"), 2),
            fmt(r.get("rps"), 2),
            fmt(r.get("p50_ms"), 2),
        ]
        for r in rows_in
    ]
    return table(
        [
            "workload",
            "ratio",
            "ext_proc CPU/req",
            "Envoy+ext_proc CPU/req",
            "req/s",
            "p50",
        ],
        rows,
    )


def _pct(s: Mapping[str, float] | None) -> str:
    if s is None:
        return "–"
    return f"{100 * s['median']:.1f}%"


# Issue 6's targets, each checked against this run's own numbers (not against a stored
# baseline): the no-op is measured in the same passes, so the verdicts hold for this machine.
RATIO_TARGET = 1.15  # tokenbook / no-op, ext_proc CPU per request, same transport and phases
TRANSPORT_JSON_US = 250.0  # the no-op's CPU per JSON request (gate + meter streams)
TRANSPORT_CHUNK_US = 40.0  # the no-op's CPU per further streamed chunk
TTFB_ADDED_MS = 0.5  # tokenbook's p50 time to first byte minus plain Envoy's, one stream


def _median(s: Mapping[str, float] | None) -> float | None:
    return None if s is None else s["median"]


def targets(
    summary: Mapping[str, Mapping[str, Any]],
    ratio_rows: Sequence[Mapping[str, Any]],
    ttfb: Sequence[Mapping[str, Any]],
    *,
    transport: str,
    stream_events: int,
) -> list[dict[str, Any]]:
    """One row per target: ``target``, ``measured`` (text), ``met`` (True, False, or None when
    this run did not measure it, e.g. a workload left out)."""
    tb, noop = f"tokenbook-{transport}", f"noop-{transport}"

    def cpu(workload: str, setup: str) -> float | None:
        return _median(summary.get(workload, {}).get(setup, {}).get("extproc_cpu_us"))

    rows: list[dict[str, Any]] = []
    worst: tuple[float, str] | None = None
    parts = []
    for r in ratio_rows:
        if r["ratio"] == f"{tb} / {noop}" and r.get("extproc_cpu_us"):
            value = r["extproc_cpu_us"]["median"]
            parts.append(f"{r['workload']} {value:.2f}×")
            worst = max(worst or (value, ""), (value, r["workload"]))
    rows.append(
        {
            "target": f"tokenbook ≤ {RATIO_TARGET}× the no-op ({transport}, ext_proc CPU/req)",
            "measured": ", ".join(parts) or "–",
            "met": None if worst is None else worst[0] <= RATIO_TARGET,
        }
    )
    json_us = cpu("json_c32", noop)
    rows.append(
        {
            "target": f"transport ≤ {TRANSPORT_JSON_US:.0f} µs per JSON request (no-op, json_c32)",
            "measured": "–" if json_us is None else f"{json_us:.0f} µs",
            "met": None if json_us is None else json_us <= TRANSPORT_JSON_US,
        }
    )
    stream_us, sse_us = cpu("stream_c32", noop), cpu("sse_c32", noop)
    chunk_us = (
        None
        if stream_us is None or sse_us is None
        else (stream_us - sse_us) / max(1, stream_events - 1)
    )
    rows.append(
        {
            "target": f"transport ≤ {TRANSPORT_CHUNK_US:.0f} µs per further streamed chunk "
            "(no-op: (stream_c32 − sse_c32) / further chunks)",
            "measured": "–" if chunk_us is None else f"{chunk_us:.0f} µs",
            "met": None if chunk_us is None else chunk_us <= TRANSPORT_CHUNK_US,
        }
    )
    lost = [
        s["lost"]["max"]
        for by_setup in summary.values()
        for name, s in by_setup.items()
        if name == tb and s.get("lost") is not None
    ]
    rows.append(
        {
            "target": "0 observations lost (every run of every workload)",
            "measured": "–" if not lost else f"{max(lost):.0f} in the worst run",
            "met": None if not lost else max(lost) == 0,
        }
    )
    p50 = {
        t["setup"]: t["ttfb_p50_ms"]
        for t in ttfb
        if t["concurrency"] == 1 and t["ttfb_p50_ms"] is not None
    }
    added = p50[tb] - p50["plain"] if tb in p50 and "plain" in p50 else None
    rows.append(
        {
            "target": f"≤ {TTFB_ADDED_MS} ms added p50 time to first byte (one stream, vs plain)",
            "measured": "–" if added is None else f"+{added:.2f} ms",
            "met": None if added is None else added <= TTFB_ADDED_MS,
        }
    )
    return rows


def targets_table(rows: Sequence[Mapping[str, Any]]) -> str:
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    return table(
        ["target (issue 6)", "this run", "verdict"],
        [[r["target"], r["measured"], verdict[r["met"]]] for r in rows],
    )
