"""How good is the estimate for a stream that never stated its usage? Measured on the corpus.

Each recorded stream with reported output is cut one byte before the provider's usage statement
became complete (found by bisection on the real adapter), so the adapter has seen all the
generated text but no final usage. Its estimate is compared with the output the provider then
reported. The table is printed (``pytest -s``); the documented error in
`tokenbook.usage.estimate` comes from here, and the bounds below keep it honest.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from tests.unit.test_corpus import ROWS, body, context, expected_usage, run
from tokenbook.usage import Extraction, Reason, Source
from tokenbook.usage.estimate import estimate_output_tokens


def _cut(row: dict[str, Any], length: int) -> Extraction:
    return run(context(row), [body(row)[:length]], end_of_stream=False)


def _last_unreported_prefix(row: dict[str, Any]) -> int:
    """Longest prefix whose cut stream does not yet report the final usage."""
    lo, hi = 0, len(body(row))  # _cut(lo) is not reported, _cut(hi) is
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _cut(row, mid).source is Source.REPORTED:
            hi = mid
        else:
            lo = mid
    return lo


MEASURED = [
    row
    for row in ROWS
    if row["body_format"] != "json"
    and (want := expected_usage(row)) is not None
    and (want.output or 0) > 0
]


def measure() -> list[tuple[str, int, int, bool]]:
    """(file, estimated output, reported output, reasoning stated) per measured stream."""
    out = []
    for row in MEASURED:
        want = expected_usage(row)
        assert want is not None
        assert want.output is not None
        got = _cut(row, _last_unreported_prefix(row))
        assert got.source is Source.ESTIMATED, row["file"]
        assert got.reason is Reason.TRUNCATED, row["file"]
        if got.usage.output is None:
            # All the text came in the very event that states the usage (Titan, one chunk):
            # a cut before it saw nothing to estimate from.
            continue
        out.append((row["file"], got.usage.output, want.output, bool(want.reasoning)))
    return out


def test_estimate_error_on_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    results = measure()
    clean = [(f, est, real) for f, est, real, reasoning in results if not reasoning]
    errors = [abs(est - real) / real for _, est, real in clean]
    mean, median = statistics.mean(errors), statistics.median(errors)
    aggregate = sum(est for _, est, _ in clean) / sum(real for _, _, real in clean) - 1
    with capsys.disabled():
        print(f"\n{'stream':72} {'estimated':>9} {'reported':>8}")
        for name, est, real, reasoning in results:
            print(f"{name:72} {est:9d} {real:8d}{'  (reasoning stated)' if reasoning else ''}")
        print(
            f"estimate vs reported output, {len(clean)} streams without reasoning counts: "
            f"mean |error| {mean:.1%}, median {median:.1%}, total {aggregate:+.1%}"
        )
    assert len(clean) >= 25
    assert mean < 0.25
    assert median < 0.15
    assert abs(aggregate) < 0.2


def test_estimate_formula() -> None:
    assert estimate_output_tokens(0) == 0
    assert estimate_output_tokens(44) == 10 + 1  # 4.4 bytes a token, plus end of turn
    # one token per delta is a floor: "1, 2, 3" streamed digit by digit
    assert estimate_output_tokens(7, text_events=7) == 7 + 1
    assert estimate_output_tokens(0, tool_calls=2) == 0 + 1 + 20
