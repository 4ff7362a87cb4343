"""Override files: the shipped example, and every way a file can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenbook.pricing import (
    SOURCE_OVERRIDE,
    PriceConfigError,
    PriceOverrides,
    Pricer,
    load_overrides,
    parse_overrides,
)
from tokenbook.usage.types import TokenUsage

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "prices.example.yaml"


def test_example_file_loads_and_prices() -> None:
    overrides = load_overrides(EXAMPLE)
    assert dict(overrides.discounts) == {"openai": 0.9, "bedrock": 0.85}
    by_key = {(m.provider, m.model): m for m in overrides.models}
    azure = by_key[("azure_openai", "gpt-4o-mini-custom-deployment")]
    assert dict(azure.per_mtok) == {"input": 0.15, "cached_input": 0.075, "output": 0.60}
    pricer = Pricer(overrides)
    price = pricer.price("ollama", "llama3", TokenUsage(input=1_000_000, output=1_000_000))
    assert price is not None
    assert price.source == SOURCE_OVERRIDE
    assert price.total_usd == pytest.approx(0.08)
    arn = next(m.model for m in overrides.models if m.provider == "bedrock")
    bedrock = pricer.price("bedrock", arn, TokenUsage(cache_write=1_000_000))
    assert bedrock is not None
    assert bedrock.total_usd == pytest.approx(3.75 * 0.85)  # the bedrock discount applies


@pytest.mark.parametrize("text", ["", "# only a comment\n", "discounts:\nmodels:\n"])
def test_empty_file_means_no_overrides(tmp_path: Path, text: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    assert load_overrides(path) == PriceOverrides()


def test_parse_overrides_from_config_section() -> None:
    overrides = parse_overrides(
        {"models": [{"provider": "openai", "model": "m", "input": 1, "output": 2}]},
        origin="tokenbook.yaml: prices",
    )
    assert overrides.models[0].per_mtok == {"input": 1.0, "output": 2.0}
    with pytest.raises(PriceConfigError, match=r"^tokenbook\.yaml: prices: models\[0\]\.input"):
        parse_overrides(
            {"models": [{"provider": "openai", "model": "m", "input": "x", "output": 2}]},
            origin="tokenbook.yaml: prices",
        )


GOOD_MODEL = "  - provider: openai\n    model: m\n    input: 1\n    output: 2\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected a mapping with 'discounts' and/or 'models', got a list"),
        (
            "discount:\n  openai: 0.9\n",
            "unknown key 'discount' (expected one of: discounts, models)",
        ),
        ("discounts: 0.9\n", "discounts: expected a mapping of provider: multiplier"),
        ("discounts:\n  openai: 0\n", "discounts.openai: expected a multiplier in (0, 1]"),
        ("discounts:\n  openai: 10\n", "discounts.openai: expected a multiplier in (0, 1]"),
        ("discounts:\n  openai: ten\n", "discounts.openai: expected a number, got str 'ten'"),
        ("discounts:\n  openai: yes\n", "discounts.openai: expected a number, got bool True"),
        (
            "discounts:\n  OpenAI: 0.9\n",
            "discounts: key 'OpenAI': expected a tokenbook provider id",
        ),
        (
            "models:\n  provider: openai\n",
            "models: expected a list of model entries, got a mapping",
        ),
        ("models:\n  - gpt-4o\n", "models[0]: expected a mapping, got str"),
        (
            "models:\n  - provider: openai\n    model: m\n    output: 2\n",
            "models[0].input: missing",
        ),
        (
            "models:\n  - provider: openai\n    model: m\n    input: 1\n",
            "models[0].output: missing",
        ),
        (
            "models:\n  - provider: openai\n    model: m\n    input: 1\n    ouput: 2\n",
            "models[0]: unknown key 'ouput' (expected one of: provider, model, input,",
        ),
        (
            "models:\n  - provider: openai\n    model: m\n    input: -1\n    output: 2\n",
            "models[0].input: a price cannot be negative",
        ),
        (
            "models:\n  - provider: openai\n    model: m\n    input: .nan\n    output: 2\n",
            "models[0].input: expected a finite number",
        ),
        (
            "models:\n  - provider: openai\n    model: m\n    input: '0.1'\n    output: 2\n",
            "models[0].input: expected a number, got str '0.1'",
        ),
        ("models:\n  - model: m\n    input: 1\n    output: 2\n", "models[0].provider: expected"),
        (
            "models:\n  - provider: openai\n    model: ' '\n    input: 1\n    output: 2\n",
            "models[0].model",
        ),
        (
            "models:\n"
            + GOOD_MODEL
            + "  - provider: openai\n    model: M\n    input: 3\n    output: 4\n",
            "models[1]: duplicate entry for provider 'openai' model 'M' (already in models[0])",
        ),
        ("models: [\n", "invalid YAML at line"),
    ],
)
def test_bad_file_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceConfigError) as caught:
        load_overrides(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PriceConfigError, match="cannot read the price file"):
        load_overrides(tmp_path / "absent.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PriceConfigError, match="not UTF-8"):
        load_overrides(binary)
