"""`bench/report.targets`: the verdicts `make bench` prints for issue 6's targets, from the
run's own summary (a small hand-made one here: the function is pure)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import report


def _s(median: float) -> dict[str, float]:
    return {"median": median, "min": median, "max": median, "n": 1}


def _summary(*, tb_json: float, lost: float, noop_stream: float) -> dict[str, Any]:
    return {
        "json_c32": {
            "noop-h2": {"extproc_cpu_us": _s(160.0)},
            "tokenbook-h2": {"extproc_cpu_us": _s(tb_json), "lost": _s(lost)},
        },
        "sse_c32": {"noop-h2": {"extproc_cpu_us": _s(150.0)}},
        "stream_c32": {"noop-h2": {"extproc_cpu_us": _s(noop_stream)}},
    }


def _ttfb(plain: float, tokenbook: float) -> list[dict[str, Any]]:
    return [
        {"setup": "plain", "concurrency": 1, "ttfb_p50_ms": plain},
        {"setup": "tokenbook-h2", "concurrency": 1, "ttfb_p50_ms": tokenbook},
        {"setup": "tokenbook-h2", "concurrency": 32, "ttfb_p50_ms": 99.0},  # not this target
    ]


def _verdicts(summary: dict[str, Any], ttfb: list[dict[str, Any]]) -> list[bool | None]:
    ratios = report.ratios(
        [
            {"pass": 0, "workload": w, "setup": name, **{k: v["median"] for k, v in m.items()}}
            for w, by_setup in summary.items()
            for name, m in by_setup.items()
        ],
        [("tokenbook-h2 / noop-h2", "tokenbook-h2", "noop-h2")],
    )
    rows = report.targets(summary, ratios, ttfb, transport="h2", stream_events=30)
    return [r["met"] for r in rows]


def test_every_target_met() -> None:
    summary = _summary(tb_json=180.0, lost=0.0, noop_stream=150.0 + 29 * 20.0)
    assert _verdicts(summary, _ttfb(6.0, 6.4)) == [True, True, True, True, True]


def test_every_target_missed() -> None:
    summary = _summary(tb_json=600.0, lost=3.0, noop_stream=150.0 + 29 * 41.0)
    summary["json_c32"]["noop-h2"]["extproc_cpu_us"] = _s(260.0)
    assert _verdicts(summary, _ttfb(6.0, 6.6)) == [False, False, False, False, False]


def test_what_the_run_left_out_is_not_measured() -> None:
    summary = {"json_c32": _summary(tb_json=180.0, lost=0.0, noop_stream=0.0)["json_c32"]}
    assert _verdicts(summary, []) == [True, True, None, True, None]


@pytest.mark.parametrize(("tokenbook_ms", "met"), [(6.5, True), (6.51, False)])
def test_ttfb_boundary(tokenbook_ms: float, met: bool) -> None:
    summary = _summary(tb_json=180.0, lost=0.0, noop_stream=150.0)
    assert _verdicts(summary, _ttfb(6.0, tokenbook_ms))[-1] is met
