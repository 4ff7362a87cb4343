"""The `tokenbook.v1.KeyRegistry` admin gRPC service (protos/tokenbook/v1/registry.proto).

Every call must carry ``authorization: Bearer <admin token>``; the token is compared in constant
time. Without it: UNAUTHENTICATED. Attribution errors are INVALID_ARGUMENT with the field named;
Redis trouble is UNAVAILABLE. Secrets are returned only by IssueKey, once.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc

from tokenbook.attribution.keys import AttributionError, validate_attribution
from tokenbook.attribution.model import Attribution, KeyRecord
from tokenbook.attribution.registry import (
    DuplicateKey,
    KeyNotFound,
    KeyRegistry,
    RegistryUnavailable,
)
from tokenbook.v1 import registry_pb2 as rpb
from tokenbook.v1 import registry_pb2_grpc as rpb_grpc

# grpcio ships no type information: the servicer context is typed loosely on purpose.
Context = Any


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else ""


def parse_expiry(text: str) -> datetime | None:
    """RFC 3339 / ISO date or datetime, UTC when no zone is given; '' = never."""
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def key_info(r: KeyRecord) -> rpb.KeyInfo:
    info = rpb.KeyInfo(
        key_id=r.key_id,
        attribution=rpb.Attribution(
            owner=r.attribution.owner,
            team=r.attribution.team,
            agent=r.attribution.agent,
            workload=r.attribution.workload,
        ),
        status=r.status,
        kind=r.kind,
        created_at=_iso(r.created_at),
        created_by=r.created_by,
        expires_at=_iso(r.expires_at),
        upstream_credential_ref=r.upstream_credential_ref or "",
        provider=r.provider or "",
    )
    if r.budget_daily_usd is not None:
        info.budget_daily_usd = r.budget_daily_usd
    if r.budget_monthly_usd is not None:
        info.budget_monthly_usd = r.budget_monthly_usd
    return info


class KeyRegistryService(rpb_grpc.KeyRegistryServicer):  # type: ignore[misc]
    def __init__(self, registry: KeyRegistry, admin_token: str) -> None:
        if not admin_token:
            raise ValueError("the admin service needs an admin token")
        self._registry = registry
        self._token = admin_token.encode()

    async def _authorize(self, context: Context) -> None:
        presented = b""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                raw = value if isinstance(value, bytes) else value.encode()
                if raw[:7].lower() == b"bearer ":
                    presented = raw[7:].strip()
        if not hmac.compare_digest(presented, self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin token required")

    async def _attribution(self, a: rpb.Attribution, context: Context) -> Attribution:
        try:
            return validate_attribution(a.owner, a.team, a.agent, a.workload)
        except AttributionError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    async def IssueKey(
        self, request: rpb.IssueKeyRequest, context: Context
    ) -> rpb.IssueKeyResponse:
        await self._authorize(context)
        attribution = await self._attribution(request.attribution, context)
        try:
            expires = parse_expiry(request.expires_at)
        except ValueError:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "expires_at: not a date")
        try:
            key, record = await self._registry.issue(
                attribution,
                created_by=request.created_by or "admin-api",
                expires_at=expires,
                budget_daily_usd=request.budget_daily_usd
                if request.HasField("budget_daily_usd")
                else None,
                budget_monthly_usd=request.budget_monthly_usd
                if request.HasField("budget_monthly_usd")
                else None,
                upstream_credential_ref=request.upstream_credential_ref or None,
            )
        except RegistryUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        return rpb.IssueKeyResponse(key=key, info=key_info(record))

    async def ImportKey(self, request: rpb.ImportKeyRequest, context: Context) -> rpb.KeyInfo:
        await self._authorize(context)
        attribution = await self._attribution(request.attribution, context)
        if not request.provider_key:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "provider_key is required")
        try:
            record = await self._registry.import_key(
                request.provider_key,
                attribution,
                provider=request.provider or None,
                created_by=request.created_by or "admin-api",
            )
        except RegistryUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        except DuplicateKey as exc:
            await _abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except ValueError as exc:  # a malformed provider id or actor
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return key_info(record)

    async def GetKey(self, request: rpb.GetKeyRequest, context: Context) -> rpb.KeyInfo:
        await self._authorize(context)
        try:
            record = await self._registry.get_by_id(request.key_id)
        except RegistryUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        if record is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no key {request.key_id!r}")
        return key_info(record)

    async def ListKeys(
        self, request: rpb.ListKeysRequest, context: Context
    ) -> rpb.ListKeysResponse:
        await self._authorize(context)
        try:
            records = await self._registry.list_keys()
        except RegistryUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        return rpb.ListKeysResponse(keys=[key_info(r) for r in records])

    async def RevokeKey(self, request: rpb.RevokeKeyRequest, context: Context) -> rpb.KeyInfo:
        await self._authorize(context)
        try:
            record = await self._registry.revoke(
                request.key_id, by=request.revoked_by or "admin-api"
            )
        except KeyNotFound:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no key {request.key_id!r}")
        except RegistryUnavailable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        return key_info(record)


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")
