"""The audit's analysis on hand-built records: shares, the half-the-bill sentence, bands and
outliers, cheaper models from the real genai-prices data, unattributed spend."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbook.audit.analysis import (
    MIN_FENCE_FACTOR,
    alternatives_for,
    analyse,
    average_request,
    band_of,
    flag_of,
    spread_pick,
)
from tokenbook.audit.model import (
    BAND_QUARTILES,
    BAND_RANGE,
    FLAG_HIGH,
    FLAG_LOW,
    REASON_LABEL_OVERFLOW,
    REASON_MISSING_LABEL,
    REASON_UNKNOWN_KEY,
    Alternative,
    AuditRecord,
    AuditReport,
    SourceInfo,
)
from tokenbook.pricing import Pricer
from tokenbook.usage.types import TokenUsage

SOURCE = SourceInfo("metrics", "http://test/metrics", None, "since each tokenbook process started")


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer()


def rec(
    key_id: str,
    cost: float | None,
    *,
    workload: str = "indexing",
    owner: str | None = None,
    provider: str = "openai",
    model: str = "gpt-4o",
    tokens: TokenUsage | None = None,
    requests: int = 1,
) -> AuditRecord:
    return AuditRecord(
        key_id=key_id,
        owner=owner if owner is not None else f"owner-{key_id}",
        team="team",
        agent="agent",
        workload=workload,
        provider=provider,
        model=model,
        tokens=tokens if tokens is not None else TokenUsage(input=1000, output=100),
        cost_usd=cost,
        requests=requests,
    )


def priced(
    pricer: Pricer, key_id: str, provider: str, model: str, mean: TokenUsage, n: int, **kw: str
) -> AuditRecord:
    """A record of ``n`` requests of size ``mean``, costed with the real prices."""
    price = pricer.price(provider, model, mean)
    assert price is not None, (provider, model)
    total = TokenUsage(**{t: c * n for t, c in mean.items()})
    return rec(
        key_id, price.total_usd * n, provider=provider, model=model, tokens=total, requests=n, **kw
    )


def report(records: Sequence[AuditRecord], pricer: Pricer, **kw: int) -> AuditReport:
    return analyse(records, pricer, source=SOURCE, **kw)  # type: ignore[arg-type]


# -- section 1: keys by spend ------------------------------------------------------------------


def test_keys_ranked_by_spend_with_shares_and_the_half_the_bill_sentence(pricer: Pricer) -> None:
    costs = {"a": 5.0, "b": 20.0, "c": 18.0, "d": 15.0, "e": 12.0, "f": 10.0, "g": 20.0}
    r = report([rec(k, c) for k, c in costs.items()], pricer)
    assert [k.key_id for k in r.keys] == ["b", "g", "c", "d", "e", "f", "a"]  # ties by key id
    assert [k.rank for k in r.keys] == list(range(1, 8))
    assert r.totals.cost_usd == pytest.approx(100.0)
    assert [k.share_pct for k in r.keys] == pytest.approx([20, 20, 18, 15, 12, 10, 5])
    assert [k.cumulative_pct for k in r.keys] == pytest.approx([20, 40, 58, 73, 85, 95, 100])
    assert r.keys[-1].cumulative_pct == 100.0
    # 20 + 20 = 40 < 50; with 18 it is 58: three keys
    assert r.concentration.keys_for_half == 3
    assert r.concentration.share_pct == pytest.approx(58.0)
    assert r.concentration.sentence.startswith("These 3 keys are half the bill")
    assert "3 of 7 keys" in r.concentration.sentence
    assert "$58.0000 of $100.0000" in r.concentration.sentence


def test_one_key_over_half_and_a_single_key(pricer: Pricer) -> None:
    r = report([rec("big", 80.0), rec("small", 20.0)], pricer)
    assert r.concentration.keys_for_half == 1
    assert r.concentration.sentence.startswith("This key is half the bill")
    only = report([rec("solo", 3.0)], pricer)
    assert only.concentration.sentence == "One key is the whole bill: $3.0000."


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["k1", "k2", "k3", "k4", "k5", "k6"]),
            st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False)),
            st.sampled_from(["indexing", "chat", "batch"]),
        ),
        max_size=40,
    )
)
def test_shares_sum_to_100(rows: list[tuple[str, float | None, str]]) -> None:
    pricer = Pricer()
    r = analyse([rec(k, c, workload=w) for k, c, w in rows], pricer, source=SOURCE, alternatives=0)
    costs = [k.cost_usd for k in r.keys]
    assert costs == sorted(costs, reverse=True)
    if r.totals.cost_usd > 0:
        assert math.fsum(k.share_pct for k in r.keys) == pytest.approx(100.0, abs=1e-9)
        assert math.fsum(w.share_pct for w in r.workloads) == pytest.approx(100.0, abs=1e-9)
        assert r.keys[-1].cumulative_pct == 100.0
        assert r.concentration.share_pct >= 50.0 - 1e-9
    else:
        assert all(k.share_pct == 0 for k in r.keys)
    assert r.totals.keys == len({k for k, _, _ in rows})


def test_unpriced_usage_is_counted_never_costed(pricer: Pricer) -> None:
    r = report(
        [
            rec("a", 2.0),
            rec("a", None, model="mystery", tokens=TokenUsage(input=500)),
            rec("b", None, model="mystery", tokens=TokenUsage(input=700, output=7)),
        ],
        pricer,
    )
    assert r.totals.cost_usd == 2.0
    assert r.totals.unpriced_tokens == 1207
    a, b = r.keys
    assert (a.key_id, a.share_pct, a.unpriced_tokens, a.tokens) == ("a", 100.0, 500, 1600)
    assert (b.key_id, b.cost_usd, b.share_pct, b.unpriced_tokens) == ("b", 0.0, 0.0, 707)
    (workload,) = r.workloads
    mystery = next(m for m in workload.models if m.model == "mystery")
    assert mystery.cost_usd is None  # unknown, not $0
    assert mystery.alternatives == ()
    assert workload.models[-1] is mystery  # unpriced models last
    # b has no priced spend: no tokens-per-dollar figure for it
    assert [e.key_id for e in r.efficiency] == ["a"]


# -- section 2: tokens per dollar against the workload band ---------------------------------


def test_band_is_min_max_below_four_keys_and_flags_nothing() -> None:
    band = band_of([1000.0, 10.0, 100_000.0])
    assert (band.kind, band.low, band.high, band.keys) == (BAND_RANGE, 10.0, 100_000.0, 3)
    assert band.fence_low is None
    assert band.fence_high is None
    assert flag_of(1.0, band) is None


def test_band_quartiles_on_a_log_scale() -> None:
    values = [1e3, 1e4, 1e5, 1e6, 1e7]
    band = band_of(values)
    assert band.kind == BAND_QUARTILES
    # log10 quartiles of 3,4,5,6,7 are 4 and 6
    assert band.low == pytest.approx(1e4)
    assert band.high == pytest.approx(1e6)
    # Tukey: 1.5 IQR = 3 decades beyond each edge
    assert band.fence_low == pytest.approx(10.0)
    assert band.fence_high == pytest.approx(1e9)


def test_band_fences_are_at_least_a_factor_apart_when_keys_agree() -> None:
    band = band_of([1e6, 1e6, 1e6, 1e6])
    assert band.fence_low == pytest.approx(1e6 / MIN_FENCE_FACTOR)
    assert band.fence_high == pytest.approx(1e6 * MIN_FENCE_FACTOR)
    assert flag_of(0.9e6, band) is None  # a rounding difference is not an outlier
    assert flag_of(0.4e6, band) == FLAG_LOW
    assert flag_of(2.5e6, band) == FLAG_HIGH


def test_band_needs_positive_values() -> None:
    with pytest.raises(ValueError, match="positive"):
        band_of([1.0, 0.0])


def test_outlier_key_in_a_workload_is_flagged(pricer: Pricer) -> None:
    # Five keys of one workload on gpt-4o-mini, and one that sends the same traffic to
    # claude-opus: far fewer tokens per dollar than its workload's band.
    mean = TokenUsage(input=2000, output=300)
    records = [priced(pricer, f"mini{i}", "openai", "gpt-4o-mini", mean, 10 + i) for i in range(5)]
    records.append(priced(pricer, "opus", "anthropic", "claude-opus-4-1", mean, 10))
    records.append(priced(pricer, "alone", "openai", "gpt-4o", mean, 5, workload="other"))
    r = report(records, pricer)
    by_key = {e.key_id: e for e in r.efficiency}
    assert by_key["opus"].flag == FLAG_LOW
    assert by_key["opus"].band.kind == BAND_QUARTILES
    assert by_key["opus"].band.keys == 6
    assert by_key["opus"].tokens_per_usd < by_key["opus"].band.fence_low  # type: ignore[operator]
    assert all(by_key[f"mini{i}"].flag is None for i in range(5))
    # tokens per dollar is tokens over cost
    mini0 = next(k for k in r.keys if k.key_id == "mini0")
    assert by_key["mini0"].tokens_per_usd == pytest.approx(mini0.tokens / mini0.cost_usd)
    # a workload of one key has a min-max band of itself and no flag
    assert by_key["alone"].band.kind == BAND_RANGE
    assert by_key["alone"].flag is None
    # grouped by workload, lowest tokens per dollar first
    indexing = [e for e in r.efficiency if e.workload == "indexing"]
    assert indexing[0].key_id == "opus"
    assert [e.tokens_per_usd for e in indexing] == sorted(e.tokens_per_usd for e in indexing)


# -- section 3: cheaper models ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model"), [("anthropic", "claude-opus-4-1"), ("openai", "gpt-4o")]
)
def test_expensive_workload_gets_cheaper_models(pricer: Pricer, provider: str, model: str) -> None:
    mean = TokenUsage(input=3000, cached_input=1000, output=500)
    r = report([priced(pricer, "k", provider, model, mean, 40)], pricer)
    (workload,) = r.workloads
    (spend,) = workload.models
    assert (spend.provider, spend.model, spend.requests) == (provider, model, 40)
    assert spend.tokens == {"input": 120_000, "cached_input": 40_000, "output": 20_000}
    assert spend.cost_usd is not None
    assert 1 <= len(spend.alternatives) <= 3
    for alt in spend.alternatives:
        assert alt.provider == provider  # same provider unless --any-provider
        assert alt.model != model
        assert 0 < alt.cost_usd < spend.cost_usd
        assert alt.saving_usd == pytest.approx(spend.cost_usd - alt.cost_usd)
        assert alt.saving_pct == pytest.approx(100 * alt.saving_usd / spend.cost_usd)
        # "what the same traffic would have cost": the alternative's price of the mean
        # request, times the requests
        alt_price = pricer.price(alt.provider, alt.model, mean)
        assert alt_price is not None
        assert alt.cost_usd == pytest.approx(alt_price.total_usd * 40)
    # nearest cheaper first, the cheapest last
    costs = [a.cost_usd for a in spend.alternatives]
    assert costs == sorted(costs, reverse=True)
    cheapest = pricer.cheaper_alternatives(provider, mean, model=model, limit=1)[0]
    assert spend.alternatives[-1].cost_usd == pytest.approx(cheapest[2] * 40)


def test_any_provider_searches_every_provider(pricer: Pricer) -> None:
    mean = TokenUsage(input=3000, output=500)
    r = report([priced(pricer, "k", "anthropic", "claude-opus-4-1", mean, 10)], pricer)
    wide = analyse(
        [priced(pricer, "k", "anthropic", "claude-opus-4-1", mean, 10)],
        pricer,
        source=SOURCE,
        any_provider=True,
        alternatives=5,
    )
    cheapest_here = r.workloads[0].models[0].alternatives[-1].cost_usd
    cheapest_anywhere = wide.workloads[0].models[0].alternatives[-1].cost_usd
    assert cheapest_anywhere <= cheapest_here
    assert {a.provider for a in wide.workloads[0].models[0].alternatives} != {"anthropic"}


def test_alternatives_are_priced_per_average_request_not_as_one_huge_request(
    pricer: Pricer,
) -> None:
    # 1000 requests of 10k input tokens: the window holds 10M input tokens, far above the
    # 200k-token tier of long-context prices, but every single request is below it.
    mean = TokenUsage(input=10_000, output=1000)
    n = 1000
    booked = pricer.price("anthropic", "claude-opus-4-1", mean)
    assert booked is not None
    totals = {t: c * n for t, c in mean.items()}
    alts = alternatives_for(
        pricer, "anthropic", "claude-opus-4-1", totals, n, booked.total_usd * n, limit=50
    )
    assert alts
    for alt in alts:
        per_request = pricer.price(alt.provider, alt.model, mean)
        assert per_request is not None
        assert alt.cost_usd == pytest.approx(per_request.total_usd * n)


def test_average_request_keeps_unstated_types_unstated() -> None:
    assert average_request({"input": 1001, "output": 299}, 10) == TokenUsage(input=100, output=30)
    assert average_request({"input": 5}, 0) == TokenUsage(input=5)


def test_spread_pick_keeps_both_ends() -> None:
    items = [Alternative("p", f"m{i}", float(i), 0.0, 0.0) for i in range(1, 11)]
    picked = spread_pick(items, 3)
    assert [a.model for a in picked] == ["m10", "m5", "m1"]
    assert [a.model for a in spread_pick(items, 1)] == ["m10"]  # the nearest cheaper one
    assert spread_pick(items, 0) == ()
    assert len(spread_pick(items[:2], 5)) == 2


def test_no_alternatives_when_asked_for_none(pricer: Pricer) -> None:
    mean = TokenUsage(input=3000, output=500)
    r = report([priced(pricer, "k", "openai", "gpt-4o", mean, 4)], pricer, alternatives=0)
    assert r.workloads[0].models[0].alternatives == ()


def test_workloads_sorted_by_spend_with_their_token_mix(pricer: Pricer) -> None:
    r = report(
        [
            rec("a", 1.0, workload="small", tokens=TokenUsage(input=10, output=5)),
            rec("b", 9.0, workload="big", tokens=TokenUsage(input=100, reasoning=50)),
            rec("c", 1.0, workload="big", model="gpt-4o-mini", tokens=TokenUsage(input=1)),
        ],
        pricer,
        alternatives=0,
    )
    assert [w.workload for w in r.workloads] == ["big", "small"]
    big = r.workloads[0]
    assert big.cost_usd == 10.0
    assert big.share_pct == pytest.approx(100 * 10 / 11)
    assert big.tokens == {"input": 101, "reasoning": 50}
    assert [m.model for m in big.models] == ["gpt-4o", "gpt-4o-mini"]


# -- section 4: unattributed -----------------------------------------------------------------


def test_unattributed_spend_with_reasons(pricer: Pricer) -> None:
    r = report(
        [
            rec("good", 6.0),
            rec("fp1", 2.0, owner="unattributed", workload="unattributed"),
            rec("many", 1.0, owner="other"),
            rec("bare", 1.0, workload=""),
        ],
        pricer,
    )
    u = r.unattributed
    assert u.cost_usd == pytest.approx(4.0)
    assert u.share_pct == pytest.approx(40.0)
    reasons = {k.key_id: k.reason for k in u.keys}
    assert reasons == {
        "fp1": REASON_UNKNOWN_KEY,
        "many": REASON_LABEL_OVERFLOW,
        "bare": REASON_MISSING_LABEL,
    }
    assert [k.key_id for k in u.keys] == ["fp1", "bare", "many"]  # by spend, then key id
    assert u.tokens == 3 * 1100
    bare = next(k for k in r.keys if k.key_id == "bare")
    assert bare.workload == "unknown"  # an empty label is shown as unknown


def test_fully_attributed_spend_has_no_unattributed_section_rows(pricer: Pricer) -> None:
    r = report([rec("a", 1.0), rec("b", 2.0)], pricer)
    assert r.unattributed.keys == ()
    assert r.unattributed.cost_usd == 0.0


def test_empty_input_is_an_empty_report(pricer: Pricer) -> None:
    r = report([], pricer)
    assert r.keys == ()
    assert r.totals.cost_usd == 0
    assert r.concentration.sentence == "No priced spend in this window."
    assert r.catalogue_version == pricer.catalogue_version
