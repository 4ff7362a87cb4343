"""In-process gRPC: the gate admits (with an admission id), the meter books, the ledger records;
budgets and suspensions answer in the provider's shape; two replicas share one Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import redis.asyncio as aioredis
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from tests.extproc.test_processors import _gate, _headers, _issue, request_headers_msg
from tokenbook.app import App, Running
from tokenbook.ledger.budgets import BudgetStore
from tokenbook.ledger.keyspace import Keyspace
from tokenbook.ledger.periods import period_of, to_micro
from tokenbook.settings import load_settings

KS = Keyspace()
FIXTURE = "openai/chat/nonstream_prompt_cache_hit.json"

Started = tuple[App, Running]


@pytest.fixture
async def start_app(
    redis_url: str, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[Started]]]:
    tasks: list[tuple[asyncio.Task[None], Running]] = []

    async def start() -> Started:
        settings = load_settings(
            {
                "listen": "127.0.0.1:0",
                "metrics_listen": "127.0.0.1:0",
                "redis_url": redis_url,
                "ledger_spool_dir": str(tmp_path / f"spool{len(tasks)}"),
            },
            environ={},
        )
        application = App(settings, environ={})
        ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(application.run(ready.set_result))
        running = await asyncio.wait_for(ready, 10)
        tasks.append((task, running))
        await _until(lambda: application.ledger.controls.loaded)
        return application, running

    yield start
    for task, running in tasks:
        running.stop()
        await asyncio.wait_for(task, 10)


async def _until(check: Callable[[], object], within_s: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def _meter(port: int, gate_answer: pb.ProcessingResponse, rid: str, body: bytes) -> None:
    first = request_headers_msg("openai", "/openai/v1/chat/completions", [], request_id=rid)
    first.metadata_context.filter_metadata["tokenbook"].CopyFrom(
        gate_answer.dynamic_metadata.fields["tokenbook"].struct_value
    )
    msgs = [
        first,
        pb.ProcessingRequest(
            response_headers=_headers([(":status", "200"), ("content-type", "application/json")])
        ),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=True)),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = pb_grpc.ExternalProcessorStub(ch).Process(
            metadata=(("x-tokenbook-filter", "meter"),)
        )
        for m in msgs:
            await call.write(m)
        assert await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF


def _gate_msg(key: str, rid: str) -> pb.ProcessingRequest:
    msg = request_headers_msg(
        "openai", "/openai/v1/chat/completions", [("authorization", f"Bearer {key}")], rid
    )
    # No body follows, so the gate answers the headers and is done (no include_usage rewrite).
    msg.request_headers.end_of_stream = True
    return msg


async def test_gate_and_meter_book_one_ledger_entry_with_spend(
    start_app: Callable[[], Awaitable[Started]], redis_url: str, corpus_dir: Path
) -> None:
    application, running = await start_app()
    key, key_id = await _issue(redis_url, budget_daily_usd=5.0)
    answer, _ = await _gate(running.grpc_port, _gate_msg(key, "rid-7"))
    meta = answer.dynamic_metadata.fields["tokenbook"].struct_value.fields
    admission_id = meta["admission_id"].string_value
    assert admission_id
    check = aioredis.from_url(redis_url)
    try:
        day = period_of("daily", __import__("datetime").datetime.now(__import__("datetime").UTC))
        reserved = KS.reserved("key", key_id, day.label)
        assert await check.get(reserved) == str(to_micro(0.01)).encode()  # the default floor
        body = (corpus_dir / FIXTURE).read_bytes()
        await _meter(running.grpc_port, answer, "rid-7", body)
        await _until(lambda: check.xlen(KS.ledger))
        raw: list[Any] = await check.xrange(KS.ledger) or []
        [(_, f)] = raw
        assert f[b"request_id"] == b"rid-7"
        assert f[b"booking_id"] == f"rid-7.{admission_id}".encode()
        assert f[b"key_id"] == key_id.encode()
        assert (f[b"tokens_input"], f[b"tokens_cached_input"]) == (b"125", b"1024")
        assert f[b"outcome"] == b"ok"
        assert f[b"source"] == b"reported"
        cost = float(f[b"cost_usd"])
        assert cost > 0
        assert await check.get(KS.spend("key", key_id, day.label)) == str(to_micro(cost)).encode()
        assert not await check.exists(reserved)
        assert len(application.ledger.pending) == 0
        # Envoy retrying the same observation (same request and admission id): booked once.
        await _meter(running.grpc_port, answer, "rid-7", body)
        reg = running.metrics.registry
        await _until(
            lambda: reg.get_sample_value("tokenbook_ledger_writes_total", {"result": "duplicate"})
        )
        assert await check.xlen(KS.ledger) == 1
    finally:
        await check.aclose()


async def test_used_up_budget_is_429_with_retry_after(
    start_app: Callable[[], Awaitable[Started]], redis_url: str
) -> None:
    _, running = await start_app()
    key, key_id = await _issue(redis_url, budget_daily_usd=1.0)
    check = aioredis.from_url(redis_url)
    day = period_of("daily", __import__("datetime").datetime.now(__import__("datetime").UTC))
    await check.set(KS.spend("key", key_id, day.label), to_micro(1.0))
    await check.aclose()
    answer, ended = await _gate(running.grpc_port, _gate_msg(key, "rid-8"))
    assert ended
    ir = answer.immediate_response
    assert ir.status.code == 429
    body = orjson.loads(ir.body)
    assert body["error"]["code"] == "budget_exceeded"
    assert body["error"]["type"] == "insufficient_quota"
    assert "daily budget of key" in body["error"]["message"]
    headers = {h.header.key: h.header.raw_value.decode() for h in ir.headers.set_headers}
    assert int(headers["retry-after"]) > 0
    assert headers["x-should-retry"] == "false"
    reg = running.metrics.registry
    assert (
        reg.get_sample_value("tokenbook_budget_denied_total", {"scope": "key", "id": key_id}) == 1.0
    )


async def test_suspension_reaches_every_replica_within_a_second(
    start_app: Callable[[], Awaitable[Started]], redis_url: str
) -> None:
    replicas = [await start_app(), await start_app()]
    key, _ = await _issue(redis_url)
    for _, running in replicas:
        answer, _ = await _gate(running.grpc_port, _gate_msg(key, "before"))
        assert answer.WhichOneof("response") == "request_headers"
    admin = aioredis.from_url(redis_url)
    try:
        await BudgetStore(admin).suspend("crawler", by="oncall", reason="drill")
        suspended_at = time.monotonic()
        took = []
        for _, running in replicas:

            async def refused(port: int = running.grpc_port) -> bool:
                answer, _ = await _gate(port, _gate_msg(key, "after"))
                return bool(answer.WhichOneof("response") == "immediate_response")

            await _until(refused, within_s=2.0)
            took.append(time.monotonic() - suspended_at)
        print(f"\nsuspension refused on both replicas after {max(took) * 1000:.0f} ms")
        assert max(took) < 1.0
        answer, _ = await _gate(replicas[0][1].grpc_port, _gate_msg(key, "x"))
        assert answer.immediate_response.status.code == 403
        assert b"agent_suspended" in answer.immediate_response.body
        await BudgetStore(admin).resume("crawler")
        for _, running in replicas:

            async def admitted(port: int = running.grpc_port) -> bool:
                answer, _ = await _gate(port, _gate_msg(key, "resumed"))
                return bool(answer.WhichOneof("response") == "request_headers")

            await _until(admitted, within_s=2.0)
    finally:
        await admin.aclose()


async def test_serve_starts_with_redis_down_and_reports_degraded(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.support.redis_server import free_port

    settings = load_settings(
        {
            "listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "redis_url": f"redis://127.0.0.1:{free_port()}/0",
            "ledger_spool_dir": str(tmp_path / "spool"),
        },
        environ={},
    )
    application = App(settings, environ={})
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(application.run(ready.set_result))
    running = await asyncio.wait_for(ready, 10)
    try:
        reg = running.metrics.registry
        await _until(lambda: reg.get_sample_value("tokenbook_ledger_degraded") == 1.0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop()
        await asyncio.wait_for(task, 10)
