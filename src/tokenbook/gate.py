"""The gate's decision for one request: admit it with trusted attribution, or refuse it.

Plain Python: the extproc layer turns a `GateRequest` out of Envoy's request-headers message and
turns the `Admit` / `Refuse` back into an Envoy answer. Failure behaviour, per DESIGN.md:

- no key, unknown key  -> ``unknown_keys`` policy: 401 in the provider's error shape (deny), or
  admitted as ``unattributed`` with the key's fingerprint as key_id (allow);
- revoked / expired    -> always 401;
- registry unreachable and the key not cached -> ``registry_down`` policy: 503 (deny) or
  admitted as ``unattributed`` (allow);
- agent suspended (``tokenbook agents suspend``) -> 403;
- a budget used up (the key's, its agent's, workload's or team's) -> 429 naming the budget and
  when it resets.

The last two, and the admission record that lets a request the meter never books be counted,
are `tokenbook.ledger.admission.AdmissionControl`'s; an admitted request's dynamic metadata
carries its ``admission_id`` so the meter books it under the same idempotency id.

Every client-sent ``x-tokenbook-*`` header is removed before the trusted ones are set, and the
tokenbook key never leaves the gateway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tokenbook.attribution.cache import KeyResolver
from tokenbook.attribution.headers import (
    QUERY,
    UnsupportedCredential,
    attribution_headers,
    client_attribution_headers,
    credential_header,
    find_key,
    headers_carrying,
    remove_query_key,
    unattributed,
)
from tokenbook.attribution.keys import parse_key_id
from tokenbook.attribution.model import KeyRecord, Unattributed
from tokenbook.attribution.registry import RegistryUnavailable
from tokenbook.ledger.admission import AdmissionControl, Refusal
from tokenbook.providers import ErrorReply, error_reply
from tokenbook.request_body import (
    DEFAULT_INCLUDE_USAGE_PROVIDERS,
    BodyRewrite,
    body_use,
    handle_body,
)
from tokenbook.requestinfo import RequestInfo

log = logging.getLogger("tokenbook.gate")


@dataclass(frozen=True, slots=True)
class Admit:
    """Forward the request with these header changes; `metadata` goes to the meter."""

    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    metadata: Mapping[str, str]
    decision: str = "allowed"
    # Ask Envoy for the buffered request body (mode_override), and why (`request_body.body_use`).
    body_use: str | None = None

    @property
    def want_body(self) -> bool:
        return self.body_use is not None


@dataclass(frozen=True, slots=True)
class Refuse:
    reply: ErrorReply
    decision: str  # the reason, as a metric label value


@dataclass(frozen=True, slots=True)
class GatePolicy:
    unknown_keys: str = "deny"  # deny | allow
    registry_down: str = "deny"  # deny | allow
    credential_swap: bool = False
    # credential ref -> the secret, read once at start-up
    credentials: Mapping[str, str] = field(default_factory=dict)
    # provider -> credential ref used when the key names none
    provider_credentials: Mapping[str, str] = field(default_factory=dict)
    # Providers whose streaming chat requests get stream_options.include_usage added.
    include_usage_providers: frozenset[str] = DEFAULT_INCLUDE_USAGE_PROVIDERS


def _without_query_key(raw_path: str) -> str:
    """`raw_path` with the ``key`` query parameter removed (Gemini's ``?key=`` style)."""
    path, sep, query = raw_path.partition("?")
    if not sep:
        return raw_path
    kept = remove_query_key(query)
    return f"{path}?{kept}" if kept else path


class Gate:
    def __init__(
        self,
        resolver: KeyResolver,
        policy: GatePolicy,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        wall: Callable[[], float] = time.time,
        admission: AdmissionControl | None = None,
    ) -> None:
        self._resolver = resolver
        self._policy = policy
        self._now = now
        self._wall = wall
        self._admission = admission

    async def decide(self, req: RequestInfo) -> Admit | Refuse:
        provider = req.provider or "unknown"
        found = find_key(req.headers, req.query)
        if found is None:
            return await self._unknown(
                req, provider, None, None, "missing_key", "no API key was sent"
            )
        key, where = found
        try:
            record = await self._resolver.resolve(key)
        except RegistryUnavailable:
            if self._policy.registry_down == "allow":
                return await self._admit(req, provider, None, key, where, "allowed_registry_down")
            return Refuse(
                error_reply(
                    provider,
                    503,
                    "registry_unavailable",
                    "the key registry is unreachable; retry shortly",
                ),
                "registry_unavailable",
            )
        if record is None:
            return await self._unknown(req, provider, key, where, "unknown_key", "unknown API key")
        reason = record.denial_reason(self._now())
        if reason is not None:
            return Refuse(
                error_reply(provider, 401, f"key_{reason}", f"this API key is {reason}"),
                f"key_{reason}",
            )
        return await self._admit(req, provider, record, key, where, "allowed")

    async def _unknown(
        self,
        req: RequestInfo,
        provider: str,
        key: str | None,
        where: str | None,
        decision: str,
        message: str,
    ) -> Admit | Refuse:
        if self._policy.unknown_keys == "allow":
            return await self._admit(req, provider, None, key, where, f"allowed_{decision}")
        return Refuse(error_reply(provider, 401, decision, message), decision)

    async def _admit(
        self,
        req: RequestInfo,
        provider: str,
        record: KeyRecord | None,
        key: str | None,
        where: str | None,
        decision: str,
    ) -> Admit | Refuse:
        subject: KeyRecord | Unattributed = record if record is not None else unattributed(key)
        attribution = subject.attribution
        admission_id = ""
        if self._admission is not None:
            verdict = await self._admission.admit(
                provider=provider,
                request_id=req.request_id,
                key_id=subject.key_id,
                attribution=attribution,
                attributed=record is not None,
                key_budget=(
                    (record.budget_daily_usd, record.budget_monthly_usd)
                    if record is not None
                    else (None, None)
                ),
            )
            if isinstance(verdict, Refusal):
                return Refuse(verdict.reply, verdict.decision)
            admission_id = verdict.admission_id
        set_headers = attribution_headers(subject)
        remove = client_attribution_headers(req.headers)
        path = req.raw_path
        if key is not None and where is not None and parse_key_id(key) is not None:
            # A tokenbook key never leaves the gateway (every header carrying it is removed, and
            # a query key is cut from the path); provider keys pass through unchanged.
            remove.extend(headers_carrying(req.headers, key))
            if where == QUERY or key in req.query:
                path = _without_query_key(req.raw_path)
                set_headers.append((":path", path))
            credential = self._credential_for(provider, record)
            if credential is not None:
                try:
                    set_headers.append(credential_header(provider, credential))
                except UnsupportedCredential as exc:
                    log.warning("credential swap skipped: %s", exc)
        metadata = {
            "key_id": subject.key_id,
            "owner": attribution.owner,
            "team": attribution.team,
            "agent": attribution.agent,
            "workload": attribution.workload,
            "provider": provider,
            "request_id": req.request_id,
            "admitted_at": f"{self._wall():.6f}",
            # The path for the meter (route prefix kept): it sees no request headers, and
            # Envoy's `request.path` attribute is rewritten by then for routes with a
            # `prefix_rewrite` (measured). Never a `key=` parameter, not even a provider's
            # key passing through: dynamic metadata can end up in access logs.
            "path": _without_query_key(path) if "key" in req.query else path,
        }
        if admission_id:
            metadata["admission_id"] = admission_id
        # Envoy applies removals after sets: never remove a header we set (the set overwrites
        # every client-sent copy of it anyway, duplicates included).
        set_names = {name for name, _ in set_headers}
        return Admit(
            set_headers=tuple(set_headers),
            remove_headers=tuple(n for n in dict.fromkeys(remove) if n not in set_names),
            metadata=metadata,
            decision=decision,
            body_use=body_use(
                req.provider,
                req.method,
                req.provider_path,
                req.header("content-length"),
                self._policy.include_usage_providers,
            ),
        )

    def rewrite_body(self, body: bytes, use: str) -> BodyRewrite:
        """The buffered request body of an admitted request that asked for it, for the
        `Admit.body_use` it was asked for: include_usage added, or only its model read."""
        return handle_body(body, use)

    def _credential_for(self, provider: str, record: KeyRecord | None) -> str | None:
        if not self._policy.credential_swap:
            return None
        ref = record.upstream_credential_ref if record is not None else None
        ref = ref or self._policy.provider_credentials.get(provider)
        if ref is None:
            return None
        return self._policy.credentials.get(ref)
