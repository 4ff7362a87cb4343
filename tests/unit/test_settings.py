"""Settings: defaults < YAML < TOKENBOOK_* env < flags, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenbook.settings import SettingsError, load_settings


def test_precedence_defaults_yaml_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: 127.0.0.1:1111\nunknown_keys: allow\nkey_cache_ttl_s: 5\n")
    s = load_settings({}, {}, str(cfg))
    assert s.listen == "127.0.0.1:1111"
    assert s.unknown_keys == "allow"
    assert s.key_cache_ttl_s == 5.0
    assert s.metrics_listen == "127.0.0.1:9464"  # default
    s = load_settings({}, {"TOKENBOOK_LISTEN": "127.0.0.1:2222"}, str(cfg))
    assert s.listen == "127.0.0.1:2222"
    s = load_settings(
        {"listen": "127.0.0.1:3333"}, {"TOKENBOOK_LISTEN": "127.0.0.1:2222"}, str(cfg)
    )
    assert s.listen == "127.0.0.1:3333"
    s = load_settings({"listen": None}, {"TOKENBOOK_CONFIG": str(cfg)})
    assert s.listen == "127.0.0.1:1111"


def test_admin_enabled_follows_the_token() -> None:
    assert not load_settings({}, {}).admin_enabled
    assert load_settings({}, {"TOKENBOOK_ADMIN_TOKEN": "t"}).admin_enabled
    assert not load_settings({"admin": False}, {"TOKENBOOK_ADMIN_TOKEN": "t"}).admin_enabled
    with pytest.raises(SettingsError, match="TOKENBOOK_ADMIN_TOKEN"):
        load_settings({"admin": True}, {})


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("unknown_keys: maybe\n", "unknown_keys"),
        ("bogus: 1\n", "bogus"),
        ("key_cache_ttl_s: soon\n", "key_cache_ttl_s"),
        ("labels: [owner, colour]\n", "colour"),
        ("routes: {r1: nowhere}\n", "nowhere"),
        ("provider_credentials: {openai: missing}\n", "missing"),
        ("credentials: {x: {}}\n", "credentials.x"),
        ("- a list\n", "mapping"),
        ("listen: [\n", "YAML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, yaml_text: str, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(SettingsError, match=needle):
        load_settings({}, {}, str(cfg))


def test_missing_config_file() -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings({}, {}, "/nonexistent/tokenbook.yaml")


def test_routes_and_extra_providers(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("routes: {llm-main: openai}\nproviders: {my-vllm: {dialect: openai}}\n")
    s = load_settings({}, {}, str(cfg))
    assert s.provider_for_route("llm-main") == "openai"
    assert s.provider_for_route("my-vllm") == "my-vllm"
    assert s.provider_for_route("anthropic") == "anthropic"
    assert s.provider_for_route("someone-elses-route") is None
