"""In-process gRPC tests of the gate and the meter, speaking Envoy's ext_proc protocol.

A real `App` (grpc.aio server, real Redis registry, real pricing, metrics on a fresh registry) on
ephemeral ports; a grpc.aio client plays Envoy, sending the messages Envoy 1.40 sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenbook.app import App, Running
from tokenbook.attribution.model import Attribution
from tokenbook.attribution.registry import KeyRegistry
from tokenbook.settings import load_settings
from tokenbook.v1 import registry_pb2 as rpb
from tokenbook.v1 import registry_pb2_grpc as rpb_grpc

ADMIN_TOKEN = "in-process-admin-token"


def _headers(pairs: Sequence[tuple[str, str]], *, end_of_stream: bool = False) -> pb.HttpHeaders:
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
        ),
        end_of_stream=end_of_stream,
    )


def _attrs(route: str, request_id: str) -> dict[str, struct_pb2.Struct]:
    s = struct_pb2.Struct()
    s.update({"xds.route_name": route, "request.id": request_id})
    return {"envoy.filters.http.ext_proc": s}


def request_headers_msg(
    route: str, path: str, headers: Sequence[tuple[str, str]], request_id: str = "rid-1"
) -> pb.ProcessingRequest:
    base = [(":method", "POST"), (":path", path), (":authority", "gw"), *headers]
    return pb.ProcessingRequest(
        request_headers=_headers(base), attributes=_attrs(route, request_id)
    )


@pytest.fixture(params=["grpcio", "h2"])
async def app(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    """The service on each transport (`--transport`): both must pass every scenario here."""
    settings = load_settings(
        {
            "listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "redis_url": redis_url,
            "admin_token": ADMIN_TOKEN,
            "transport": request.param,
        },
        environ={},
    )
    application = App(settings, environ={})
    ready: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(application.run(ready.set_result))
    running = await asyncio.wait_for(ready, 10)
    yield running
    running.stop()
    await asyncio.wait_for(task, 10)


async def _issue(redis_url: str, **kw: object) -> tuple[str, str]:
    """A key for alice/search/crawler/indexing; ``kw`` goes to `KeyRegistry.issue` (budgets)."""
    client = aioredis.from_url(redis_url)
    try:
        key, record = await KeyRegistry(client).issue(
            Attribution(owner="alice", team="search", agent="crawler", workload="indexing"),
            created_by="test",
            **kw,  # type: ignore[arg-type]
        )
    finally:
        await client.aclose()
    return key, record.key_id


async def _gate(port: int, msg: pb.ProcessingRequest) -> tuple[pb.ProcessingResponse, bool]:
    """Send one request-headers message as the gate; return the answer and whether the server
    ended the RPC by itself."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = pb_grpc.ExternalProcessorStub(ch).Process(metadata=(("x-tokenbook-filter", "gate"),))
        await call.write(msg)
        answer = await call.read()
        ended = await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        return answer, ended


async def test_gate_admits_with_attribution_and_strips_spoofed(
    app: Running, redis_url: str
) -> None:
    key, key_id = await _issue(redis_url)
    msg = request_headers_msg(
        "openai",
        "/openai/v1/embeddings",
        [
            ("authorization", f"Bearer {key}"),
            ("x-tokenbook-owner", "mallory"),
            ("x-tokenbook-x", "1"),
        ],
    )
    answer, ended = await _gate(app.grpc_port, msg)
    assert ended, "the gate must end its RPC after answering"
    assert answer.WhichOneof("response") == "request_headers"
    mutation = answer.request_headers.response.header_mutation
    set_headers = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert set_headers["x-tokenbook-owner"] == "alice"
    assert set_headers["x-tokenbook-key-id"] == key_id
    assert "x-tokenbook-x" in mutation.remove_headers
    assert "authorization" in mutation.remove_headers
    meta = answer.dynamic_metadata.fields["tokenbook"].struct_value.fields
    assert meta["team"].string_value == "search"
    assert meta["request_id"].string_value == "rid-1"


async def test_gate_adds_include_usage_to_streaming_chat(app: Running, redis_url: str) -> None:
    key, _ = await _issue(redis_url)
    msg = request_headers_msg(
        "openai", "/openai/v1/chat/completions", [("authorization", f"Bearer {key}")]
    )
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        call = pb_grpc.ExternalProcessorStub(ch).Process(metadata=(("x-tokenbook-filter", "gate"),))
        await call.write(msg)
        first = await call.read()
        assert first.mode_override.request_body_mode == first.mode_override.BUFFERED
        await call.write(
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))
        )
        second = await call.read()
        assert await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF
    common = second.request_body.response
    new_body = common.body_mutation.body
    import orjson

    assert orjson.loads(new_body)["stream_options"] == {"include_usage": True}
    lengths = [
        h.header.raw_value
        for h in common.header_mutation.set_headers
        if h.header.key == "content-length"
    ]
    assert lengths == [str(len(new_body)).encode()]
    meta = second.dynamic_metadata.fields["tokenbook"].struct_value.fields
    assert meta["request_model"].string_value == "gpt-4o-mini"


async def test_gate_refuses_unknown_key_with_openai_error(app: Running) -> None:
    msg = request_headers_msg("openai", "/openai/v1/models", [("authorization", "Bearer nope")])
    answer, _ = await _gate(app.grpc_port, msg)
    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 401
    assert b'"unknown_key"' in answer.immediate_response.body
    denied = app.metrics.registry.get_sample_value(
        "tokenbook_gate_decisions_total", {"provider": "openai", "decision": "unknown_key"}
    )
    assert denied == 1.0


def response_headers_msg(
    pairs: Sequence[tuple[str, str]],
    attributes: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
) -> pb.ProcessingRequest:
    """The meter's first message as the shipped config has it (no request-headers phase):
    response headers, the request as `response_attributes`, the gate's metadata."""
    msg = pb.ProcessingRequest(response_headers=_headers(pairs), observability_mode=True)
    if attributes is not None:
        msg.attributes["envoy.filters.http.ext_proc"].update(attributes)
    if metadata is not None:
        msg.metadata_context.filter_metadata["tokenbook"].update(metadata)
    return msg


async def _meter(port: int, msgs: Sequence[pb.ProcessingRequest]) -> grpc.StatusCode | None:
    """Play Envoy's meter stream; the server must end the RPC itself (no half-close).

    The RPC's status, or None when the server ended it before every message was written (it
    may, at the provider's terminal event; Envoy then stops sending): a grpc.aio client
    reports its own failed write then, not the server's status.
    """
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = pb_grpc.ExternalProcessorStub(ch).Process(
            metadata=(("x-tokenbook-filter", "meter"),)
        )
        for m in msgs:
            try:
                await call.write(m)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return None
        # No answers in observability mode; the server ends the RPC without our half-close.
        assert await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF
        code: grpc.StatusCode = await call.code()
        return code


ATTRIBUTION = {"key_id": "k1", "owner": "o", "team": "t", "agent": "a", "workload": "w"}
SSE_HEADERS = [(":status", "200"), ("content-type", "text/event-stream")]


@pytest.mark.parametrize("config", ["response_attributes", "request_headers"])
async def test_meter_books_sse_and_ends_the_rpc_itself(
    app: Running, corpus_dir: object, config: str
) -> None:
    """Both meter configs: the shipped one (the request comes as response attributes) and
    one rendered before it (a request-headers message first)."""
    from pathlib import Path

    body = (Path(str(corpus_dir)) / "openai/chat/stream_include_usage_reasoning.sse").read_bytes()
    if config == "request_headers":
        meta = struct_pb2.Struct()
        meta.update(ATTRIBUTION)
        first = request_headers_msg("openai", "/openai/v1/chat/completions", [])
        first.metadata_context.filter_metadata["tokenbook"].CopyFrom(meta)
        first.observability_mode = True
        msgs = [first, pb.ProcessingRequest(response_headers=_headers(SSE_HEADERS))]
    else:
        attributes = {
            "xds.route_name": "openai",
            "request.id": "rid-1",
            # what Envoy reports after a prefix_rewrite: the gate's `path` wins
            "request.path": "/upstream-base/v1/chat/completions",
            "request.method": "POST",
            "request.time": "2026-12-03T22:33:23.827313+00:00",
            "response.code_details": "via_upstream",
        }
        gate_metadata = {**ATTRIBUTION, "path": "/openai/v1/chat/completions"}
        msgs = [response_headers_msg(SSE_HEADERS, attributes, gate_metadata)]
    step = 211
    for i in range(0, len(body), step):
        msgs.append(
            pb.ProcessingRequest(
                response_body=pb.HttpBody(body=body[i : i + step]), observability_mode=True
            )
        )
    msgs.append(pb.ProcessingRequest(response_body=pb.HttpBody(end_of_stream=True)))
    # Ended at `[DONE]` or at the end-of-stream message, whichever the server saw first.
    assert await _meter(app.grpc_port, msgs) in (grpc.StatusCode.OK, None)
    labels = {
        "token_type": "reasoning",
        "provider": "openai",
        "model": "gpt-5-nano-2025-08-07",
        "owner": "o",
        "team": "t",
        "agent": "a",
        "workload": "w",
        "key_id": "k1",
        "source": "reported",
    }
    reg = app.metrics.registry
    assert reg.get_sample_value("tokenbook_tokens_total", labels) == 100.0
    assert reg.get_sample_value("tokenbook_tokens_total", {**labels, "token_type": "input"}) == 12.0


async def test_meter_ends_the_rpc_at_the_providers_last_event(
    app: Running, corpus_dir: object
) -> None:
    """No end-of-stream body message (Envoy sends none when the upstream's final empty chunk
    comes on its own): `[DONE]` books the request and ends the RPC, instead of Envoy's
    `deferred_close_timeout` later."""
    from pathlib import Path

    body = (Path(str(corpus_dir)) / "openai/chat/stream_include_usage_reasoning.sse").read_bytes()
    attributes = {"xds.route_name": "openai", "request.id": "rid-done", "request.method": "POST"}
    meta = {**ATTRIBUTION, "key_id": "k-done", "path": "/openai/v1/chat/completions"}
    msgs = [response_headers_msg(SSE_HEADERS, attributes, meta)]
    msgs += [
        pb.ProcessingRequest(response_body=pb.HttpBody(body=body[i : i + 211]))
        for i in range(0, len(body), 211)
    ]
    assert await _meter(app.grpc_port, msgs) == grpc.StatusCode.OK
    ok = app.metrics.registry.get_sample_value(
        "tokenbook_requests_total",
        {
            "provider": "openai",
            "model": "gpt-5-nano-2025-08-07",
            **{k: v for k, v in meta.items() if k in ATTRIBUTION},
            "outcome": "ok",
        },
    )
    assert ok == 1.0


def _requests_booked(app: Running) -> float:
    return sum(
        s.value
        for metric in app.metrics.registry.collect()
        if metric.name == "tokenbook_requests"
        for s in metric.samples
        if s.name == "tokenbook_requests_total"
    )


@pytest.mark.parametrize(
    ("attributes", "error_kind"),
    [
        # the gate refused it (its immediate response) and booked the refusal itself
        (
            {
                "xds.route_name": "openai",
                "request.id": "rid-refused",
                "response.code_details": "tokenbook_gate_refused",
            },
            None,
        ),
        # not a tokenbook route
        ({"xds.route_name": "somewhere_else", "request.id": "rid-x"}, None),
        # a meter filter configured without response_attributes (the gate's metadata came):
        # counted, never silent
        (None, "no_attributes"),
        # no attributes and no metadata: a refusal under a config rendered before (its meter
        # asks for request attributes only); nothing to book, nothing wrong
        (None, None),
    ],
)
async def test_meter_ends_at_once_what_it_does_not_book(
    app: Running, attributes: dict[str, str] | None, error_kind: str | None
) -> None:
    errors = {"role": "meter", "kind": "no_attributes"}
    reg = app.metrics.registry
    booked_before = _requests_booked(app)
    errors_before = reg.get_sample_value("tokenbook_extproc_errors_total", errors) or 0.0
    # Only the response headers: the server must end the RPC without waiting for the body.
    first = response_headers_msg([(":status", "401"), ("content-type", "application/json")])
    if attributes is not None:
        first.attributes["envoy.filters.http.ext_proc"].update(attributes)
    elif error_kind is not None:
        first.metadata_context.filter_metadata["tokenbook"].update(ATTRIBUTION)
    assert await _meter(app.grpc_port, [first]) == grpc.StatusCode.OK
    assert _requests_booked(app) == booked_before
    errors_after = reg.get_sample_value("tokenbook_extproc_errors_total", errors) or 0.0
    assert errors_after - errors_before == (1.0 if error_kind else 0.0)


async def test_meter_books_a_cut_stream_as_aborted(app: Running, corpus_dir: object) -> None:
    from pathlib import Path

    body = (Path(str(corpus_dir)) / "anthropic/messages/stream_cache_read.sse").read_bytes()
    first = request_headers_msg("anthropic", "/anthropic/v1/messages", [])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        call = pb_grpc.ExternalProcessorStub(ch).Process(
            metadata=(("x-tokenbook-filter", "meter"),)
        )
        await call.write(first)
        await call.write(
            pb.ProcessingRequest(
                response_headers=_headers(
                    [(":status", "200"), ("content-type", "text/event-stream")]
                )
            )
        )
        await call.write(
            pb.ProcessingRequest(response_body=pb.HttpBody(body=body[: len(body) // 3]))
        )
        await call.done_writing()  # Envoy closes the stream when the client disconnects
        assert await asyncio.wait_for(call.read(), 2) is grpc.aio.EOF
    reg = app.metrics.registry
    aborted = reg.get_sample_value(
        "tokenbook_requests_total",
        {
            "provider": "anthropic",
            "model": "claude-3-5-sonnet-20240620",
            "owner": "unattributed",
            "team": "unattributed",
            "agent": "unattributed",
            "workload": "unattributed",
            "key_id": "unattributed",
            "outcome": "aborted",
        },
    )
    assert aborted == 1.0


async def test_health_and_admin_api(app: Running) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        admin = rpb_grpc.KeyRegistryStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await admin.ListKeys(rpb.ListKeysRequest())
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin.IssueKey(
                rpb.IssueKeyRequest(attribution=rpb.Attribution(owner="a", team="b", agent="c")),
                metadata=auth,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "workload" in (bad.value.details() or "")
        issued = await admin.IssueKey(
            rpb.IssueKeyRequest(
                attribution=rpb.Attribution(owner="a", team="b", agent="c", workload="d")
            ),
            metadata=auth,
        )
        assert issued.key.startswith("tb_")
        assert issued.info.key_id in issued.key
        listed = await admin.ListKeys(rpb.ListKeysRequest(), metadata=auth)
        assert issued.info.key_id in [k.key_id for k in listed.keys]
        assert issued.key not in str(listed)
        revoked = await admin.RevokeKey(
            rpb.RevokeKeyRequest(key_id=issued.info.key_id), metadata=auth
        )
        assert revoked.status == "revoked"


README_TEXT = (Path(__file__).resolve().parents[2] / "README.md").read_text()


async def test_every_exported_metric_is_documented_in_the_readme(redis_url: str) -> None:
    # The App as `serve` composes it (every instrument and collector), without running it.
    settings = load_settings(
        {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "redis_url": redis_url},
        environ={},
    )
    application = App(settings, environ={})
    readme = README_TEXT
    names = {family.name for family in application.metrics_registry.collect()}
    await application.redis.aclose()
    assert len(names) > 15
    missing = sorted(n for n in names if f"`{n}`" not in readme and f"`{n}_total`" not in readme)
    assert not missing, f"metrics missing from the README's Metrics table: {missing}"
