"""Operator price overrides: negotiated discounts and prices for models genai-prices lacks.

The file (``--prices-file``, or the ``prices:`` section of ``--config``) is YAML::

    discounts:                # multiply every price of that tokenbook provider
      openai: 0.9             # 10% off; a multiplier in (0, 1]
      bedrock: 0.75
    models:                   # prices per million tokens, in USD
      - provider: openai      # tokenbook provider id (route prefix)
        model: gpt-4o-mini-custom-deployment   # the model id as the provider reports it
        input: 0.15           # required
        output: 0.60          # required (0 for embedding models)
        cached_input: 0.075   # optional, defaults to input
        cache_write: 0.1875   # optional, defaults to input
        reasoning: 0.60       # optional, defaults to output
      - provider: ollama      # local models have no list price: give them one to book a cost
        model: llama3
        input: 0
        output: 0

Rules:

- A model entry wins over genai-prices for that (provider, model). The model is compared
  case-insensitively with the id as reported and with its normalised forms (``models/x`` -> ``x``).
- A discount applies to every price of that provider, from genai-prices and from model entries.
- Unknown keys, wrong types, negative or non-finite prices, a discount outside (0, 1] and
  duplicate (provider, model) entries are errors: `PriceConfigError`, whose message names the file
  and the field (``prices.yaml: models[1].output: …``). An empty file means no overrides.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from tokenbook.pricing.errors import PriceConfigError
from tokenbook.usage.types import TOKEN_TYPES

_PROVIDER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_REQUIRED_RATES = ("input", "output")
_MODEL_KEYS = ("provider", "model", *TOKEN_TYPES)
_TOP_KEYS = ("discounts", "models")


@dataclass(frozen=True, slots=True)
class ModelPriceOverride:
    """Prices for one (provider, model), in USD per million tokens by token type.

    ``per_mtok`` holds the types the operator stated; the fallbacks (cache types -> input,
    reasoning -> output) are applied when the pricer builds its rate card.
    """

    provider: str
    model: str
    per_mtok: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class PriceOverrides:
    """Everything an override file says. The default is "no overrides"."""

    models: tuple[ModelPriceOverride, ...] = ()
    discounts: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


def load_overrides(path: str | Path) -> PriceOverrides:
    """Read and validate an override file. Raises `PriceConfigError` naming file and field."""
    origin = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceConfigError(f"{origin}: cannot read the price file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PriceConfigError(f"{origin}: not UTF-8 text: {exc.reason}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PriceConfigError(f"{origin}: invalid YAML{where}: {problem}") from exc
    return parse_overrides(data, origin=origin)


def parse_overrides(data: object, *, origin: str) -> PriceOverrides:
    """Validate already-parsed YAML (``None`` = empty). ``origin`` prefixes every error message."""
    if data is None:
        return PriceOverrides()
    if not isinstance(data, Mapping):
        raise PriceConfigError(
            f"{origin}: expected a mapping with 'discounts' and/or 'models', got {_kind(data)}"
        )
    _no_unknown_keys(data, _TOP_KEYS, origin)
    discounts = _discounts(data.get("discounts"), f"{origin}: discounts")
    models = _models(data.get("models"), origin)
    return PriceOverrides(models=models, discounts=discounts)


def _discounts(raw: object, where: str) -> Mapping[str, float]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        raise PriceConfigError(
            f"{where}: expected a mapping of provider: multiplier, got {_kind(raw)}"
        )
    out: dict[str, float] = {}
    for provider, value in raw.items():
        provider = _provider_id(provider, f"{where}: key {provider!r}")
        multiplier = _number(value, f"{where}.{provider}")
        if not 0 < multiplier <= 1:
            raise PriceConfigError(
                f"{where}.{provider}: expected a multiplier in (0, 1], e.g. 0.9 for 10% off, "
                f"got {value!r}"
            )
        out[provider] = multiplier
    return MappingProxyType(out)


def _models(raw: object, origin: str) -> tuple[ModelPriceOverride, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PriceConfigError(
            f"{origin}: models: expected a list of model entries, got {_kind(raw)}"
        )
    out: list[ModelPriceOverride] = []
    seen: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(raw):
        where = f"{origin}: models[{index}]"
        if not isinstance(entry, Mapping):
            raise PriceConfigError(f"{where}: expected a mapping, got {_kind(entry)}")
        _no_unknown_keys(entry, _MODEL_KEYS, where)
        provider = _provider_id(entry.get("provider"), f"{where}.provider")
        model = entry.get("model")
        if not isinstance(model, str) or not model.strip():
            raise PriceConfigError(f"{where}.model: expected the model id, got {model!r}")
        model = model.strip()
        for name in _REQUIRED_RATES:
            if name not in entry:
                raise PriceConfigError(f"{where}.{name}: missing (USD per million tokens)")
        per_mtok: dict[str, float] = {}
        for name in TOKEN_TYPES:
            if name in entry:
                value = _number(entry[name], f"{where}.{name}")
                if value < 0:
                    raise PriceConfigError(
                        f"{where}.{name}: a price cannot be negative, got {value!r}"
                    )
                per_mtok[name] = value
        key = (provider, model.lower())
        if key in seen:
            raise PriceConfigError(
                f"{where}: duplicate entry for provider {provider!r} model {model!r} "
                f"(already in models[{seen[key]}])"
            )
        seen[key] = index
        out.append(ModelPriceOverride(provider, model, MappingProxyType(per_mtok)))
    return tuple(out)


def _no_unknown_keys(
    mapping: Mapping[object, object], allowed: tuple[str, ...], where: str
) -> None:
    for key in mapping:
        if key not in allowed:
            raise PriceConfigError(
                f"{where}: unknown key {key!r} (expected one of: {', '.join(allowed)})"
            )


def _provider_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _PROVIDER_ID.match(value):
        raise PriceConfigError(
            f"{where}: expected a tokenbook provider id such as 'openai' "
            f"(lower case, [a-z0-9._-]), got {value!r}"
        )
    return value


def _number(value: object, where: str) -> float:
    # bool is an int in Python; `input: yes` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PriceConfigError(f"{where}: expected a number, got {_kind(value)} {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PriceConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
