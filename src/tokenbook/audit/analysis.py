"""From usage rows to the audit report: who spends, how efficiently, on what, and unattributed.

    records (any source) ──► analyse(records, pricer, source=…) ──► AuditReport

Choices that shape the numbers, and why:

- **Shares** are of priced spend. Usage that could not be priced is counted in tokens
  (``unpriced_tokens``), never as $0, and carries no share.
- **Tokens per dollar** of a key is its priced tokens over its cost. A workload's **band** is the
  p25-p75 of its keys' tokens per dollar when it has at least `MIN_KEYS_FOR_QUARTILES` priced
  keys, else their min-max (quartiles of two or three values say nothing). Quartiles are taken
  on a log scale, because tokens per dollar spans orders of magnitude between models; a key is
  an **outlier** when it lies more than 1.5 interquartile ranges outside the band (Tukey's
  fences) and at least a factor `MIN_FENCE_FACTOR` away from it, so that a workload whose keys
  all behave alike does not flag a key for a rounding difference. With the min-max band no key
  is flagged.
- **Cheaper candidates** for a model in a workload come from `Pricer.cheaper_alternatives`,
  priced on that traffic's *average request* and multiplied by the request count: prices with
  context-length tiers (e.g. above 200k input tokens) apply per request, so pricing the whole
  window's tokens as one request would pick the wrong tier. Of the cheaper models, up to
  ``alternatives`` are shown, spread from the nearest cheaper one (the smallest step down) to
  the cheapest, one per distinct price (aliases of one price entry cost the same).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from tokenbook.audit.model import (
    ATTRIBUTION,
    BAND_QUARTILES,
    BAND_RANGE,
    FLAG_HIGH,
    FLAG_LOW,
    OVERFLOW,
    REASON_LABEL_OVERFLOW,
    REASON_MISSING_LABEL,
    REASON_UNKNOWN_KEY,
    UNATTRIBUTED,
    UNKNOWN,
    Alternative,
    AuditRecord,
    AuditReport,
    Band,
    Concentration,
    KeyEfficiency,
    KeySpend,
    ModelSpend,
    SourceInfo,
    Totals,
    Unattributed,
    UnattributedKey,
    WorkloadSpend,
)
from tokenbook.pricing.pricer import Pricer
from tokenbook.usage.types import TOKEN_TYPES, TokenUsage

MIN_KEYS_FOR_QUARTILES = 4
TUKEY_K = 1.5
MIN_FENCE_FACTOR = 2.0
# Asked of the pricer before choosing which to show; more than any provider has cheaper models.
_CANDIDATE_POOL = 10_000


# -- accumulation ------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Running sums for one group of rows (a key, a workload's model, ...)."""

    tokens: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    priced: bool = False  # at least one row of the group had a cost
    priced_tokens: int = 0
    unpriced_tokens: int = 0
    requests: int = 0
    priced_requests: int = 0

    def add(self, record: AuditRecord) -> None:
        total = 0
        for token_type, count in record.tokens.items():
            self.tokens[token_type] = self.tokens.get(token_type, 0) + count
            total += count
        self.requests += record.requests
        if record.cost_usd is None:
            self.unpriced_tokens += total
        else:
            self.priced = True
            self.cost_usd += record.cost_usd
            self.priced_tokens += total
            self.priced_requests += record.requests

    @property
    def total_tokens(self) -> int:
        return self.priced_tokens + self.unpriced_tokens


def _by_type(tokens: Mapping[str, int]) -> dict[str, int]:
    return {t: tokens[t] for t in TOKEN_TYPES if t in tokens}


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else 0.0


# -- section 1: keys by spend -----------------------------------------------------------------


def _rank_keys(
    tallies: Mapping[str, _Tally], labels: Mapping[str, Mapping[str, str]], total: float
) -> tuple[KeySpend, ...]:
    ordered = sorted(tallies, key=lambda k: (-tallies[k].cost_usd, k))
    out: list[KeySpend] = []
    cumulative = 0.0
    for rank, key_id in enumerate(ordered, start=1):
        t = tallies[key_id]
        cumulative += t.cost_usd
        attr = labels[key_id]
        out.append(
            KeySpend(
                rank=rank,
                key_id=key_id,
                owner=attr["owner"],
                team=attr["team"],
                agent=attr["agent"],
                workload=attr["workload"],
                cost_usd=t.cost_usd,
                share_pct=_pct(t.cost_usd, total),
                # The last key's cumulative share is exactly 100, not 99.99999999999999.
                cumulative_pct=100.0
                if rank == len(ordered) and total > 0
                else _pct(cumulative, total),
                tokens=t.total_tokens,
                unpriced_tokens=t.unpriced_tokens,
                requests=t.requests,
            )
        )
    return tuple(out)


def concentration(keys: Sequence[KeySpend], total: float) -> Concentration:
    """The fewest top keys that make at least half the bill, and the sentence saying so."""
    if total <= 0 or not keys:
        return Concentration(0, len(keys), 0.0, 0.0, "No priced spend in this window.")
    spent = 0.0
    count = 0
    for key in keys:
        spent += key.cost_usd
        count += 1
        if spent >= total / 2:
            break
    share = _pct(spent, total)
    n = len(keys)
    if n == 1:
        sentence = f"One key is the whole bill: ${total:,.4f}."
    else:
        subject = "This key is" if count == 1 else f"These {count} keys are"
        sentence = (
            f"{subject} half the bill: {count} of {n} keys ({_pct(count, n):.0f} %) spent "
            f"${spent:,.4f} of ${total:,.4f} ({share:.1f} %)."
        )
    return Concentration(count, n, spent, share, sentence)


# -- section 2: tokens per dollar against the workload's band --------------------------------


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def band_of(values: Sequence[float]) -> Band:
    """The band of positive tokens-per-dollar values (see the module docstring)."""
    if not values or any(v <= 0 for v in values):
        raise ValueError("band_of needs positive values")
    ordered = sorted(values)
    if len(ordered) < MIN_KEYS_FOR_QUARTILES:
        return Band(BAND_RANGE, ordered[0], ordered[-1], len(ordered), None, None)
    logs = [math.log(v) for v in ordered]
    q1 = _quantile(logs, 0.25)
    q3 = _quantile(logs, 0.75)
    spread = max(TUKEY_K * (q3 - q1), math.log(MIN_FENCE_FACTOR))
    return Band(
        BAND_QUARTILES,
        math.exp(q1),
        math.exp(q3),
        len(ordered),
        math.exp(q1 - spread),
        math.exp(q3 + spread),
    )


def flag_of(value: float, band: Band) -> str | None:
    if band.fence_low is not None and value < band.fence_low:
        return FLAG_LOW
    if band.fence_high is not None and value > band.fence_high:
        return FLAG_HIGH
    return None


def _efficiency(
    tallies: Mapping[str, _Tally], labels: Mapping[str, Mapping[str, str]]
) -> tuple[KeyEfficiency, ...]:
    per_workload: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for key_id, t in tallies.items():
        if t.cost_usd > 0 and t.priced_tokens > 0:
            per_workload[labels[key_id]["workload"]].append((key_id, t.priced_tokens / t.cost_usd))
    out: list[KeyEfficiency] = []
    for workload in sorted(per_workload):
        members = sorted(per_workload[workload], key=lambda kv: (kv[1], kv[0]))
        band = band_of([v for _, v in members])
        out.extend(KeyEfficiency(k, workload, v, band, flag_of(v, band)) for k, v in members)
    return tuple(out)


# -- section 3: models per workload and cheaper candidates ------------------------------------


def average_request(tokens: Mapping[str, int], requests: int) -> TokenUsage:
    """The mean request of a group (types it never stated stay unstated)."""
    n = max(requests, 1)
    return TokenUsage(**{t: round(tokens[t] / n) for t in TOKEN_TYPES if t in tokens})


def spread_pick(items: Sequence[Alternative], limit: int) -> tuple[Alternative, ...]:
    """Up to ``limit`` of ``items`` (cheapest first), spread from the priciest to the cheapest."""
    if limit <= 0 or not items:
        return ()
    if len(items) <= limit:
        chosen = list(items)
    elif limit == 1:
        chosen = [items[-1]]
    else:
        step = (len(items) - 1) / (limit - 1)
        chosen = [items[round(i * step)] for i in range(limit)]
    # Nearest cheaper first: the smallest change reads first, the biggest saving last.
    return tuple(sorted(chosen, key=lambda a: (-a.cost_usd, a.provider, a.model)))


def alternatives_for(
    pricer: Pricer,
    provider: str,
    model: str,
    tokens: Mapping[str, int],
    requests: int,
    booked_usd: float,
    *,
    limit: int,
    any_provider: bool = False,
) -> tuple[Alternative, ...]:
    """Cheaper models for this traffic (see the module docstring); none if it is unpriced."""
    if limit <= 0 or booked_usd <= 0:
        return ()
    mean = average_request(tokens, requests)
    if mean.is_empty() or mean.total() == 0:
        return ()
    n = max(requests, 1)
    if any_provider:
        current = pricer.price(provider, model, mean)
        if current is None:
            return ()
        found = [
            c
            for c in pricer.cheaper_alternatives(None, mean, limit=_CANDIDATE_POOL)
            if c[2] < current.total_usd and (c[0], c[1]) != (provider, model)
        ]
    else:
        found = pricer.cheaper_alternatives(provider, mean, model=model, limit=_CANDIDATE_POOL)
    distinct: list[Alternative] = []
    seen_costs: set[float] = set()
    for alt_provider, alt_model, per_request in found:  # cheapest first
        cost = per_request * n
        key = round(cost, 12)
        if cost >= booked_usd or key in seen_costs:
            continue
        seen_costs.add(key)
        saving = booked_usd - cost
        distinct.append(
            Alternative(alt_provider, alt_model, cost, saving, _pct(saving, booked_usd))
        )
    return spread_pick(distinct, limit)


def _workloads(
    records: Iterable[AuditRecord],
    pricer: Pricer,
    total: float,
    *,
    limit: int,
    any_provider: bool,
) -> tuple[WorkloadSpend, ...]:
    per_model: dict[str, dict[tuple[str, str], _Tally]] = defaultdict(lambda: defaultdict(_Tally))
    per_workload: dict[str, _Tally] = defaultdict(_Tally)
    for r in records:
        per_model[r.workload][(r.provider, r.model)].add(r)
        per_workload[r.workload].add(r)
    out: list[WorkloadSpend] = []
    for workload in sorted(per_workload, key=lambda w: (-per_workload[w].cost_usd, w)):
        models: list[ModelSpend] = []
        tallies = per_model[workload]
        order = sorted(tallies, key=lambda pm: (not tallies[pm].priced, -tallies[pm].cost_usd, pm))
        for provider, model in order:
            t = tallies[(provider, model)]
            alternatives: tuple[Alternative, ...] = ()
            if t.priced:
                # Only the priced part of the traffic is compared: its booked cost is known.
                priced_tokens = _priced_share(t)
                alternatives = alternatives_for(
                    pricer,
                    provider,
                    model,
                    priced_tokens,
                    t.priced_requests,
                    t.cost_usd,
                    limit=limit,
                    any_provider=any_provider,
                )
            models.append(
                ModelSpend(
                    provider=provider,
                    model=model,
                    cost_usd=t.cost_usd if t.priced else None,
                    tokens=_by_type(t.tokens),
                    requests=t.requests,
                    alternatives=alternatives,
                )
            )
        w = per_workload[workload]
        out.append(
            WorkloadSpend(
                workload, w.cost_usd, _pct(w.cost_usd, total), _by_type(w.tokens), tuple(models)
            )
        )
    return tuple(out)


def _priced_share(t: _Tally) -> dict[str, int]:
    """The token mix of the priced rows of a tally.

    A model's rows are normally all priced or all unpriced (a price is per model); when both
    occur (an override added mid-window), the mix is scaled to the priced part.
    """
    if t.unpriced_tokens == 0 or t.total_tokens == 0:
        return dict(t.tokens)
    factor = t.priced_tokens / t.total_tokens
    return {k: round(v * factor) for k, v in t.tokens.items()}


# -- section 4: unattributed spend ------------------------------------------------------------


def unattributed_reason(attribution: Mapping[str, str]) -> str | None:
    """Why a row lacks attribution, or None when it is fully attributed."""
    if attribution.get("owner") == UNATTRIBUTED:
        return REASON_UNKNOWN_KEY
    values = [attribution.get(name, "") for name in ATTRIBUTION]
    if any(v == OVERFLOW for v in values):
        return REASON_LABEL_OVERFLOW
    if any(v in ("", UNKNOWN) for v in values):
        return REASON_MISSING_LABEL
    return None


# -- the report -------------------------------------------------------------------------------


def _attribution(r: AuditRecord) -> dict[str, str]:
    return {name: getattr(r, name) for name in ATTRIBUTION}


def _normalised(r: AuditRecord) -> AuditRecord:
    """Empty labels read `UNKNOWN` everywhere in the report."""
    if all(getattr(r, name) for name in ATTRIBUTION):
        return r
    return replace(
        r,
        key_id=r.key_id or UNKNOWN,
        owner=r.owner or UNKNOWN,
        team=r.team or UNKNOWN,
        agent=r.agent or UNKNOWN,
        workload=r.workload or UNKNOWN,
    )


def analyse(
    records: Iterable[AuditRecord],
    pricer: Pricer,
    *,
    source: SourceInfo,
    alternatives: int = 3,
    any_provider: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AuditReport:
    """The four sections of the audit over ``records`` (see the module docstring)."""
    rows = [_normalised(r) for r in records if r.requests > 0 or not r.tokens.is_empty()]
    keys: dict[str, _Tally] = defaultdict(_Tally)
    labels: dict[str, dict[str, str]] = {}
    # key_id -> labels -> (spend, rows) under those labels
    label_weight: dict[str, dict[tuple[str, ...], tuple[float, int]]] = defaultdict(dict)
    reasons: dict[str, str] = {}
    everything = _Tally()
    for r in rows:
        attr = _attribution(r)
        key_id = attr["key_id"]
        keys[key_id].add(r)
        everything.add(r)
        # A key's labels are fixed at issuance; should rows disagree (an "other" overflow
        # bucket holds many keys), the labels that carried most of its spend are shown.
        seen = label_weight[key_id]
        names = tuple(attr[n] for n in ATTRIBUTION)
        cost, count = seen.get(names, (0.0, 0))
        seen[names] = (cost + (r.cost_usd or 0.0), count + 1)
        reason = unattributed_reason(attr)
        if reason is not None:
            reasons.setdefault(key_id, reason)
    for key_id, options in label_weight.items():
        best = max(options, key=lambda o: (options[o], o))
        labels[key_id] = dict(zip(ATTRIBUTION, best, strict=True))

    total = everything.cost_usd
    ranked = _rank_keys(keys, labels, total)
    unattributed_keys = tuple(
        UnattributedKey(k.key_id, reasons[k.key_id], k.cost_usd, k.tokens, k.requests)
        for k in ranked
        if k.key_id in reasons
    )
    unattributed_cost = sum(k.cost_usd for k in unattributed_keys)
    return AuditReport(
        generated_at=clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        source=source,
        catalogue_version=pricer.catalogue_version,
        totals=Totals(
            cost_usd=total,
            tokens=everything.total_tokens,
            priced_tokens=everything.priced_tokens,
            unpriced_tokens=everything.unpriced_tokens,
            requests=everything.requests,
            keys=len(keys),
        ),
        keys=ranked,
        concentration=concentration(ranked, total),
        efficiency=_efficiency(keys, labels),
        workloads=_workloads(rows, pricer, total, limit=alternatives, any_provider=any_provider),
        unattributed=Unattributed(
            cost_usd=unattributed_cost,
            share_pct=_pct(unattributed_cost, total),
            tokens=sum(k.tokens for k in unattributed_keys),
            keys=unattributed_keys,
        ),
    )
