"""Typed settings for `tokenbook serve`, built once at start-up.

Precedence, lowest to highest: built-in defaults < the YAML file given with ``--config`` <
``TOKENBOOK_*`` environment variables < command-line flags. Nothing reads the environment or
files at import time: `load_settings` is called by the CLI with the parsed flags and the
environment passed in, so tests can build settings without touching the process environment.

YAML file layout (every key optional)::

    listen: 127.0.0.1:50051
    transport: h2                 # h2 (tokenbook's own HTTP/2 transport) | grpcio (grpc.aio)
    event_loop: auto              # auto (uvloop when installed) | uvloop | asyncio
    workers: 1                    # processes, on ports listen..listen+N-1 (tokenbook.workers)
    metrics_listen: 127.0.0.1:9464
    redis_url: redis://127.0.0.1:6379/0
    redis_prefix: "tokenbook:"
    unknown_keys: deny            # deny | allow (allow books the traffic as "unattributed")
    registry_down: deny           # deny | allow: uncached keys while Redis is down
    key_cache_ttl_s: 60
    negative_cache_ttl_s: 2
    drain_timeout_s: 20
    max_json_body_bytes: 4194304
    routes:                       # Envoy route name -> provider id (default: the same)
      my-openai-route: openai
    providers:                    # extra providers, with the API dialect they speak
      my-vllm: {dialect: openai}
    credential_swap: false        # replace the tokenbook key with the provider credential
    include_usage: true           # add stream_options.include_usage to OpenAI-style streams
    include_usage_providers: [openai, azure_openai]
    credentials:                  # credential refs -> where the secret is read from at start-up
      openai-prod: {env: OPENAI_API_KEY}
      anthropic-prod: {file: /run/secrets/anthropic}
    provider_credentials:         # provider -> credential ref used when the key names none
      openai: openai-prod
    labels: [owner, team, agent, workload, key_id]    # attribution labels on the token metrics
    label_limits: {model: 200, owner: 1000, team: 200, agent: 2000, workload: 1000, key_id: 10000}
    prices_file: /etc/tokenbook/prices.yaml
    # ledger, budgets, lost observations (tokenbook/ledger/)
    ledger_maxlen: 1000000        # the ledger stream keeps about this many entries (XADD MAXLEN ~)
    ledger_idempotency_ttl_s: 86400    # a booking replayed within this never counts twice
    ledger_spool_dir: tokenbook-spool  # bookings while Redis is down (one directory per replica)
    ledger_spool_max_bytes: 268435456  # 256 MiB; what does not fit is counted as dropped
    ledger_spool_fsync_entries: 100    # fsync after this many spooled lines (0: off) ...
    ledger_spool_fsync_interval_s: 1   # ... or this long after an append (0: off)
    unbooked_timeout_s: 600       # an admitted request the meter never booked is "unbooked"
    unbooked_max_pending: 1000000 # admission records kept in memory per replica
    budget_reservation_usd: 0.01  # the least a request reserves against a budget at admission
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokenbook.providers import KNOWN_PROVIDERS

ATTRIBUTION_LABELS: tuple[str, ...] = ("owner", "team", "agent", "workload", "key_id")
DEFAULT_LABEL_LIMITS: Mapping[str, int] = {
    "model": 200,
    "owner": 1000,
    "team": 200,
    "agent": 2000,
    "workload": 1000,
    "key_id": 10000,
}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """Where a provider credential is read from: an environment variable or a file."""

    env: str | None = None
    file: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    transport: str = "h2"  # h2 | grpcio: which ext_proc server (extproc/server.py)
    event_loop: str = "auto"  # auto | uvloop | asyncio (tokenbook.loop)
    workers: int = 1  # worker processes, one port each (tokenbook.workers)
    metrics_listen: str = "127.0.0.1:9464"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "tokenbook:"
    admin_token: str | None = None
    admin: bool | None = None  # None: on when a token is configured
    unknown_keys: str = "deny"
    registry_down: str = "deny"
    key_cache_ttl_s: float = 60.0
    negative_cache_ttl_s: float = 2.0
    drain_timeout_s: float = 20.0
    max_json_body_bytes: int = 4 * 1024 * 1024
    routes: Mapping[str, str] = field(default_factory=dict)
    providers: Mapping[str, str] = field(default_factory=dict)  # extra provider -> dialect
    credential_swap: bool = False
    include_usage: bool = True
    include_usage_providers: tuple[str, ...] = ("openai", "azure_openai")
    credentials: Mapping[str, CredentialSource] = field(default_factory=dict)
    provider_credentials: Mapping[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ATTRIBUTION_LABELS
    label_limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LABEL_LIMITS))
    prices_file: str | None = None
    log_level: str = "info"
    ledger_maxlen: int = 1_000_000
    ledger_idempotency_ttl_s: float = 86_400.0
    ledger_spool_dir: str = "tokenbook-spool"
    ledger_spool_max_bytes: int = 256 * 1024 * 1024
    ledger_spool_fsync_entries: int = 100
    ledger_spool_fsync_interval_s: float = 1.0
    unbooked_timeout_s: float = 600.0
    unbooked_max_pending: int = 1_000_000
    budget_reservation_usd: float = 0.01

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_token) if self.admin is None else self.admin

    def provider_for_route(self, route_name: str) -> str | None:
        """The provider id for an Envoy route name, or None when the route is not tokenbook's."""
        if route_name in self.routes:
            return self.routes[route_name]
        if route_name in KNOWN_PROVIDERS or route_name in self.providers:
            return route_name
        return None


# Settings that can come from flags / env / YAML, with their parser. Mappings only from YAML.
_SCALARS: dict[str, type] = {
    "listen": str,
    "transport": str,
    "event_loop": str,
    "workers": int,
    "metrics_listen": str,
    "redis_url": str,
    "redis_prefix": str,
    "admin_token": str,
    "admin": bool,
    "unknown_keys": str,
    "registry_down": str,
    "key_cache_ttl_s": float,
    "negative_cache_ttl_s": float,
    "drain_timeout_s": float,
    "max_json_body_bytes": int,
    "credential_swap": bool,
    "include_usage": bool,
    "prices_file": str,
    "log_level": str,
    "ledger_maxlen": int,
    "ledger_idempotency_ttl_s": float,
    "ledger_spool_dir": str,
    "ledger_spool_max_bytes": int,
    "ledger_spool_fsync_entries": int,
    "ledger_spool_fsync_interval_s": float,
    "unbooked_timeout_s": float,
    "unbooked_max_pending": int,
    "budget_reservation_usd": float,
}


def _parse_bool(name: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}: expected true/false, got {raw!r}")


def _coerce(name: str, raw: object) -> object:
    kind = _SCALARS[name]
    if kind is bool:
        return _parse_bool(name, raw)
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: expected {kind.__name__}, got {raw!r}") from None


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"--config {path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"--config {path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"--config {path}: the top level must be a mapping")
    return data


def _str_map(name: str, raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{name}: expected a mapping")
    return {str(k): str(v) for k, v in raw.items()}


def _from_yaml(data: Mapping[str, Any], origin: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, raw in data.items():
        if key in _SCALARS:
            out[key] = _coerce(key, raw)
        elif key in {"routes", "provider_credentials"}:
            out[key] = _str_map(key, raw)
        elif key == "providers":
            if not isinstance(raw, Mapping):
                raise SettingsError(f"{origin}: providers: expected a mapping")
            providers: dict[str, str] = {}
            for pid, spec in raw.items():
                dialect = spec.get("dialect") if isinstance(spec, Mapping) else None
                if not isinstance(dialect, str):
                    raise SettingsError(
                        f"{origin}: providers.{pid}: needs `dialect: <provider id>`"
                    )
                providers[str(pid)] = dialect
            out[key] = providers
        elif key == "credentials":
            if not isinstance(raw, Mapping):
                raise SettingsError(f"{origin}: credentials: expected a mapping")
            creds: dict[str, CredentialSource] = {}
            for ref, spec in raw.items():
                if not isinstance(spec, Mapping) or not ({"env", "file"} & set(spec)):
                    raise SettingsError(
                        f"{origin}: credentials.{ref}: needs `env: VAR` or `file: /path`"
                    )
                creds[str(ref)] = CredentialSource(env=spec.get("env"), file=spec.get("file"))
            out[key] = creds
        elif key == "include_usage_providers":
            if not isinstance(raw, Sequence) or isinstance(raw, str):
                raise SettingsError(f"{origin}: include_usage_providers: expected a list")
            out[key] = tuple(str(x) for x in raw)
        elif key == "labels":
            if not isinstance(raw, Sequence) or isinstance(raw, str):
                raise SettingsError(f"{origin}: labels: expected a list")
            out[key] = tuple(str(x) for x in raw)
        elif key == "label_limits":
            if not isinstance(raw, Mapping):
                raise SettingsError(f"{origin}: label_limits: expected a mapping")
            try:
                out[key] = {**DEFAULT_LABEL_LIMITS, **{str(k): int(v) for k, v in raw.items()}}
            except (TypeError, ValueError):
                raise SettingsError(f"{origin}: label_limits: values must be integers") from None
        else:
            raise SettingsError(f"{origin}: unknown setting {key!r}")
    return out


def _validate_ledger(s: Settings) -> None:
    positive = (
        "ledger_maxlen",
        "ledger_idempotency_ttl_s",
        "ledger_spool_max_bytes",
        "unbooked_timeout_s",
        "unbooked_max_pending",
        # The overrun bound of a budget (ledger/admission.py) needs a reservation above zero.
        "budget_reservation_usd",
    )
    for name in positive:
        value = getattr(s, name)
        if not value > 0 or value != value or value == float("inf"):
            raise SettingsError(f"{name}: must be a positive number, got {value!r}")
    for name in ("ledger_spool_fsync_entries", "ledger_spool_fsync_interval_s"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name}: must be 0 (off) or positive, got {getattr(s, name)!r}")


def _validate(s: Settings) -> Settings:
    _validate_ledger(s)
    if s.event_loop not in {"auto", "uvloop", "asyncio"}:
        raise SettingsError(
            f"event_loop: must be 'auto', 'uvloop' or 'asyncio', got {s.event_loop!r}"
        )
    if s.transport not in {"grpcio", "h2"}:
        raise SettingsError(f"transport: must be 'grpcio' or 'h2', got {s.transport!r}")
    if not 1 <= s.workers <= 64:
        raise SettingsError(f"workers: must be 1-64, got {s.workers!r}")
    for name in ("unknown_keys", "registry_down"):
        if getattr(s, name) not in {"deny", "allow"}:
            raise SettingsError(f"{name}: must be 'deny' or 'allow', got {getattr(s, name)!r}")
    for name in ("listen", "metrics_listen"):
        value: str = getattr(s, name)
        if not value.startswith("unix:") and ":" not in value:
            raise SettingsError(f"{name}: expected HOST:PORT, got {value!r}")
    unknown = set(s.labels) - set(ATTRIBUTION_LABELS)
    if unknown:
        raise SettingsError(
            f"labels: unknown label(s) {sorted(unknown)}; choose from {list(ATTRIBUTION_LABELS)}"
        )
    for route, provider in s.routes.items():
        if provider not in KNOWN_PROVIDERS and provider not in s.providers:
            raise SettingsError(f"routes.{route}: unknown provider {provider!r}")
    for ref in s.provider_credentials.values():
        if ref not in s.credentials:
            raise SettingsError(f"provider_credentials: credential ref {ref!r} is not defined")
    if s.admin is True and not s.admin_token:
        raise SettingsError(
            "the admin API needs a token: set TOKENBOOK_ADMIN_TOKEN (or --admin-token-file)"
        )
    if s.max_json_body_bytes <= 0:
        raise SettingsError("max_json_body_bytes: must be positive")
    return s


def load_settings(
    flags: Mapping[str, object | None],
    environ: Mapping[str, str],
    config_path: str | None = None,
) -> Settings:
    """Build the settings from (already parsed) flags, the environment and the YAML file.

    ``flags`` holds only the options the user gave (None values are ignored).
    """
    values: dict[str, object] = {}
    path = config_path or environ.get("TOKENBOOK_CONFIG")
    if path:
        values.update(_from_yaml(_read_yaml(path), f"--config {path}"))
    for name in _SCALARS:
        env_value = environ.get(f"TOKENBOOK_{name.upper()}")
        if env_value is not None and env_value != "":
            values[name] = _coerce(name, env_value)
    for name, value in flags.items():
        if value is not None:
            values[name] = _coerce(name, value) if name in _SCALARS else value
    return _validate(Settings(**values))  # type: ignore[arg-type]


def read_credential(ref: str, source: CredentialSource, environ: Mapping[str, str]) -> str:
    """Read one provider credential at start-up; a missing one is a start-up error, not a 500."""
    if source.env:
        value = environ.get(source.env, "")
        if not value:
            raise SettingsError(f"credentials.{ref}: environment variable {source.env} is not set")
        return value
    assert source.file is not None
    try:
        value = Path(source.file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(
            f"credentials.{ref}: cannot read {source.file} ({exc.strerror})"
        ) from None
    if not value:
        raise SettingsError(f"credentials.{ref}: {source.file} is empty")
    return value


def read_admin_token_file(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"--admin-token-file {path}: cannot read ({exc.strerror})") from None
    if not token:
        raise SettingsError(f"--admin-token-file {path}: the file is empty")
    return token


def process_environ() -> Mapping[str, str]:
    """The real environment; only the CLI entry point calls this."""
    return os.environ
