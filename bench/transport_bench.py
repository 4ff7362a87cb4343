"""ext_proc transports compared: CPU µs per request of `tokenbook serve`, grpcio against h2.

    .venv/bin/python bench/transport_bench.py                  # ~3 minutes, prints a table
    .venv/bin/python bench/transport_bench.py --passes 3 --duration 10
    .venv/bin/python bench/transport_bench.py --profile        # + py-spy of each transport
    .venv/bin/python bench/transport_bench.py --frames-only    # the frame-layer comparison only

What runs (every process ours, on free 127.0.0.1 ports, stopped by PID): redis-server; an
upstream Envoy answering with `direct_response` (the recorded OpenAI chat.completion JSON) that
forwards requests marked ``x-bench-upstream: stream`` to a streaming upstream (this script
with ``--stream-upstream``: SSE events 5 ms apart, ``x-bench-chunks`` of them); and per
transport a `tokenbook serve --transport T` with its own gateway Envoy rendered, unchanged, by
`tokenbook envoy-config` (gate + meter). Load: wrk, one thread, POSTing an OpenAI chat request
with a tokenbook key; transports are measured round-robin so the machine's noise hits both.

Figures per transport and workload: req/s, p50, tokenbook CPU µs per request (utime + stime
from /proc/<pid>/stat over the run, booking lag included), Envoy CPU µs per request, and
observations lost (requests wrk completed minus `tokenbook_requests_total` booked).
Workloads: ``json`` (gate with the buffered request body + meter on a JSON response),
``stream-3`` and ``stream-33`` (a streamed SSE response of 3 or 33 chunks). The cost of one more
streamed chunk is ``(stream-33 - stream-3) / 30``.

`--frames-only` feeds the same bytes (a gRPC stream as Envoy sends it: HEADERS + DATA, then
END_STREAM; answered with HEADERS + DATA + trailers) to python-hyper's `h2` server connection
and to tokenbook's `ServerConnection`, and prints µs per stream and h2's cProfile: the evidence
for writing our own frame layer.

`main(argv) -> int` can be called from another script; `measure(...)` returns the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchkey
import yaml

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus"
JSON_FIXTURE = CORPUS / "openai/chat/nonstream_prompt_cache_hit.json"
SSE_FIXTURE = CORPUS / "openai/chat/stream_include_usage_reasoning.sse"
TRANSPORTS = ("grpcio", "h2")
SETUPS = ("tokenbook-grpcio", "tokenbook-h2", "noop-grpcio", "noop-h2")
_TICK = os.sysconf("SC_CLK_TCK")


# -- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def steal_jiffies() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


# -- the streaming upstream (runs as its own process) -----------------------------------------


def sse_events(count: int) -> list[bytes]:
    """`count` SSE events: the recorded stream's first event, content deltas cloned from it,
    then the recorded finish, usage and [DONE] events."""
    events = [e.strip() + "\n\n" for e in SSE_FIXTURE.read_text().split("\n\n") if e.strip()]
    first = json.loads(events[0].removeprefix("data: "))
    pad = []
    for i in range(max(0, count - len(events))):
        doc = json.loads(json.dumps(first))
        doc["choices"][0]["delta"] = {"content": f"tok{i} "}
        pad.append("data: " + json.dumps(doc, separators=(",", ":")) + "\n\n")
    return [e.encode() for e in [events[0], *pad, *events[1:]]][: max(count, len(events))]


class _StreamConnection(asyncio.Protocol):
    """HTTP/1.1 keep-alive: read a request, answer chunked SSE, one event per `delay`."""

    def __init__(self, cache: dict[int, list[bytes]], delay: float) -> None:
        self._buf = b""
        self._cache = cache
        self._delay = delay
        self._t: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._t = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._t = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._next()

    def _next(self) -> None:
        if self._busy:
            return
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buf[:end].decode("latin-1").lower()
        m = re.search(r"content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        if len(self._buf) < end + 4 + length:
            return
        self._buf = self._buf[end + 4 + length :]
        m = re.search(r"x-bench-chunks:\s*(\d+)", head)
        count = int(m.group(1)) if m else 30
        events = self._cache.get(count)
        if events is None:
            events = self._cache[count] = sse_events(count)
        self._busy = True
        assert self._t is not None
        self._t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self._send(events, 0)

    def _send(self, events: list[bytes], i: int) -> None:
        t = self._t
        if t is None:
            return
        if i == len(events):
            t.write(b"0\r\n\r\n")
            self._busy = False
            self._next()
            return
        t.write(b"%x\r\n%s\r\n" % (len(events[i]), events[i]))
        asyncio.get_running_loop().call_later(self._delay, self._send, events, i + 1)


async def _serve_stream_upstream(port: int, delay: float) -> None:
    cache: dict[int, list[bytes]] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _StreamConnection(cache, delay), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


# -- no-op processors: the transport's own cost ------------------------------------------------


class _NoopGate:
    """Answers like tokenbook's gate on the wire (asks for the body where it would), no work."""

    def __init__(self) -> None:
        self.done = False

    async def on_message(self, msg: Any) -> Any:
        from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

        from tokenbook.extproc.streams import _BUFFER_BODY

        if msg.WhichOneof("request") == "request_headers" and not msg.request_headers.end_of_stream:
            answer = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            if _noop_wants_body(msg):
                answer.mode_override.CopyFrom(_BUFFER_BODY)
                return answer
            self.done = True
            return answer
        self.done = True
        return pb.ProcessingResponse(request_body=pb.BodyResponse())

    def close(self) -> None:
        pass


def _noop_wants_body(msg: Any) -> bool:
    from tokenbook.extproc import codec
    from tokenbook.request_body import DEFAULT_INCLUDE_USAGE_PROVIDERS, wants_body

    attrs = codec.attributes_of(msg)
    req = codec.request_info(codec.headers_of(msg.request_headers), attrs, "openai")
    return wants_body(
        "openai",
        req.method,
        req.provider_path,
        req.header("content-length"),
        DEFAULT_INCLUDE_USAGE_PROVIDERS,
    )


class _NoopMeter:
    def __init__(self) -> None:
        self.done = False

    def observe(self, msg: Any) -> bool:
        which = msg.WhichOneof("request")
        if which == "response_body":
            return bool(msg.response_body.end_of_stream)
        if which == "response_headers":
            return bool(msg.response_headers.end_of_stream)
        return bool(which == "response_trailers")

    async def on_message(self, msg: Any) -> None:
        self.done = self.observe(msg)

    def close(self) -> None:
        pass


class _NoopProcessors:
    def new_stream(self, role: str | None, first: Any) -> Any:
        return _NoopMeter() if role == "meter" else _NoopGate()


async def _serve_noop(listen: str, transport: str) -> None:
    from tokenbook.extproc.server import make_server

    server = make_server(transport, listen, _NoopProcessors(), None)  # type: ignore[arg-type]
    await server.start()
    await server.wait()


# -- the stack ------------------------------------------------------------------------------


def _upstream_envoy_config(port: int, admin: int, stream_port: int) -> dict[str, Any]:
    body = JSON_FIXTURE.read_text()
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "http_filters": [
            {
                # reads the POST body before answering (else the gateway reconnects each time)
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 1 << 20,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "prefix": "/",
                                "headers": [
                                    {
                                        "name": "x-bench-upstream",
                                        "string_match": {"exact": "stream"},
                                    }
                                ],
                            },
                            "route": {"cluster": "stream", "timeout": "60s"},
                        },
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": body}},
                            "response_headers_to_add": [
                                {"header": {"key": "content-type", "value": "application/json"}}
                            ],
                        },
                    ],
                }
            ]
        },
    }
    limit = 100_000
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "stream",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "circuit_breakers": {
                        "thresholds": [
                            {
                                "max_connections": limit,
                                "max_pending_requests": limit,
                                "max_requests": limit,
                            }
                        ]
                    },
                    "load_assignment": {
                        "cluster_name": "stream",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": stream_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


@dataclass
class Side:
    """One transport's tokenbook + gateway Envoy."""

    transport: str
    tokenbook: Any
    envoy: Any
    gateway_port: int
    metrics_port: int
    admin_port: int = 0


class BenchStack:
    def __init__(self, work: Path, setups: Sequence[str]) -> None:
        from tokenbook.testing.stack import free_port

        self.work = work
        self.setups = setups
        self.redis_port = free_port()
        self.upstream_port = free_port()
        self.stream_port = free_port()
        self.procs: list[Any] = []
        self.sides: list[Side] = []
        self.key = ""

    def start(self) -> BenchStack:
        from tokenbook.testing.stack import ManagedProcess, executable, free_port, http_get

        def run(name: str, argv: list[str], env: dict[str, str] | None = None) -> Any:
            proc = ManagedProcess(name, argv, self.work, env).start()
            self.procs.append(proc)
            return proc

        redis = run(
            "redis",
            [
                executable("redis-server"),
                "--port",
                str(self.redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ],
        )
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        stream = run(
            "stream-upstream",
            [sys.executable, __file__, "--stream-upstream", str(self.stream_port)],
        )
        up_admin = free_port()
        cfg = self.work / "upstream.yaml"
        cfg.write_text(
            yaml.safe_dump(_upstream_envoy_config(self.upstream_port, up_admin, self.stream_port))
        )
        upstream = run(
            "upstream-envoy",
            [
                executable("envoy"),
                "-c",
                str(cfg),
                "--base-id",
                str(up_admin),
                "--concurrency",
                "1",
                "--log-level",
                "error",
            ],
        )
        upstream.wait_ready(lambda: http_get(f"http://127.0.0.1:{up_admin}/ready")[0] == 200)
        redis.wait_ready(lambda: _tcp_open(self.redis_port))
        stream.wait_ready(lambda: _tcp_open(self.stream_port))
        self.key = benchkey.issue_key(redis_url, agent="bench", team="bench")
        from tokenbook.extproc.probe import serving

        for setup in self.setups:
            kind, transport = setup.split("-", 1)
            grpc_port, metrics_port, gw_port, gw_admin = (free_port() for _ in range(4))
            if kind == "noop":
                tb = run(
                    setup,
                    [
                        sys.executable,
                        __file__,
                        "--noop-server",
                        f"127.0.0.1:{grpc_port}",
                        "--noop-transport",
                        transport,
                    ],
                )
                metrics_port = 0
            else:
                tb = run(
                    setup,
                    [
                        executable("tokenbook"),
                        "serve",
                        "--transport",
                        transport,
                        "--listen",
                        f"127.0.0.1:{grpc_port}",
                        "--metrics-listen",
                        f"127.0.0.1:{metrics_port}",
                        "--redis-url",
                        redis_url,
                        "--log-level",
                        "warning",
                    ],
                )

            tb.wait_ready(lambda p=grpc_port: serving(f"127.0.0.1:{p}"))
            rendered = subprocess.run(
                [
                    executable("tokenbook"),
                    "envoy-config",
                    "--listen",
                    f"127.0.0.1:{gw_port}",
                    "--tokenbook",
                    f"127.0.0.1:{grpc_port}",
                    "--admin-port",
                    str(gw_admin),
                    "--upstream",
                    f"openai=http://127.0.0.1:{self.upstream_port}",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            gw_cfg = self.work / f"gateway-{setup}.yaml"
            gw_cfg.write_text(rendered.stdout)
            gw = run(
                f"gateway-{setup}",
                [
                    executable("envoy"),
                    "-c",
                    str(gw_cfg),
                    "--base-id",
                    str(gw_admin),
                    "--concurrency",
                    "1",
                    "--log-level",
                    "error",
                ],
            )
            gw.wait_ready(lambda a=gw_admin: http_get(f"http://127.0.0.1:{a}/ready")[0] == 200)
            self.sides.append(Side(setup, tb, gw, gw_port, metrics_port, gw_admin))
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _tcp_open(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def booked(side: Side) -> float:
    """Sum of tokenbook_requests_total over every label set (0 for a no-op setup)."""
    from tokenbook.testing.stack import http_get

    if not side.metrics_port:
        return 0.0
    _, body = http_get(f"http://127.0.0.1:{side.metrics_port}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("tokenbook_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


_TROUBLE = ("streams_failed", "failure_mode_allowed", "message_timeouts", "spurious_msgs")


def envoy_extproc_trouble(side: Side) -> str:
    """Non-zero ext_proc failure counters of a gateway (streams failed, timeouts, ...)."""
    from tokenbook.testing.stack import http_get

    _, body = http_get(f"http://127.0.0.1:{side.admin_port}/stats?filter=ext_proc")
    found = []
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        if any(t in name for t in _TROUBLE) and value.strip().isdigit() and int(value):
            found.append(f"{name.rsplit('.', 2)[-2]}.{name.rsplit('.', 1)[-1]}={value.strip()}")
    return ", ".join(found)


# -- load -----------------------------------------------------------------------------------

_WRK_LUA = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
for pair in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^;]+") do
  local name, value = string.match(pair, "^%s*([^:]+):%s*(.-)%s*$")
  if name then wrk.headers[name] = value end
end
done = function(summary, latency, requests)
  io.write(string.format('BENCHJSON {"requests":%d,"non2xx":%d,"errors":%d,"p50_us":%d}\\n',
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50)))
end
"""


@dataclass(frozen=True)
class Workload:
    name: str
    stream: bool
    chunks: int = 0


WORKLOADS = (
    Workload("json", stream=False),
    Workload("stream-3", stream=True, chunks=3),
    Workload("stream-33", stream=True, chunks=33),
)


@dataclass
class Row:
    transport: str
    workload: str
    connections: int
    rps: float
    p50_ms: float
    tokenbook_us: float
    envoy_us: float
    completed: int
    lost: int
    failed: int
    steal: float


def run_once(
    stack: BenchStack, side: Side, wl: Workload, connections: int, duration: float, work: Path
) -> Row:
    body = work / f"body-{wl.name}.json"
    request: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Summarise the news in three bullet points."}],
    }
    headers = ""
    if wl.stream:
        request["stream"] = True
        headers = f"x-bench-upstream: stream;x-bench-chunks: {wl.chunks}"
    body.write_bytes(json.dumps(request).encode())
    lua = work / "bench.lua"
    lua.write_text(_WRK_LUA)
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_KEY": stack.key, "BENCH_HEADERS": headers}
    tb_pid, gw_pid = side.tokenbook.proc.pid, side.envoy.proc.pid
    booked0 = booked(side)
    cpu0, env0 = cpu_seconds(tb_pid), cpu_seconds(gw_pid)
    steal0, total0 = steal_jiffies()
    t0 = time.monotonic()
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{side.gateway_port}/openai/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=duration + 60,
    )
    elapsed = time.monotonic() - t0
    # Let the meter finish booking what is in flight, then read the counters.
    settle_until = time.monotonic() + 5
    stats = json.loads(done.stdout.split("BENCHJSON ", 1)[1].splitlines()[0])
    ok = int(stats["requests"]) - int(stats["non2xx"])
    now = booked(side)
    while side.metrics_port and now - booked0 < ok and time.monotonic() < settle_until:
        time.sleep(0.2)
        now = booked(side)
    cpu1, env1 = cpu_seconds(tb_pid), cpu_seconds(gw_pid)
    steal1, total1 = steal_jiffies()
    n = max(int(stats["requests"]), 1)
    return Row(
        transport=side.transport,
        workload=wl.name,
        connections=connections,
        rps=n / elapsed,
        p50_ms=int(stats["p50_us"]) / 1000,
        tokenbook_us=(cpu1 - cpu0) / n * 1e6,
        envoy_us=(env1 - env0) / n * 1e6,
        completed=ok,
        lost=max(0, ok - int(now - booked0)) if side.metrics_port else -1,
        failed=int(stats["non2xx"]) + int(stats["errors"]),
        steal=(steal1 - steal0) / max(total1 - total0, 1),
    )


def measure(
    *,
    setups: Sequence[str] = SETUPS,
    workloads: Sequence[Workload] = WORKLOADS,
    connections: int = 32,
    duration: float = 8.0,
    passes: int = 2,
    profile: bool = False,
    extra_loads: Sequence[tuple[str, int]] = (),
) -> list[Row]:
    """Run the stack, measure every (pass, workload, transport) round-robin; the rows."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tokenbook-transport-bench-") as tmp:
        work = Path(tmp)
        stack = BenchStack(work, setups).start()
        try:
            for side in stack.sides:  # warm up: imports, key cache, connections
                run_once(stack, side, workloads[0], connections, 2, work)
            for _ in range(passes):
                for wl in workloads:
                    for side in stack.sides:
                        row = run_once(stack, side, wl, connections, duration, work)
                        rows.append(row)
                        _print_row(row)
            by_name = {w.name: w for w in WORKLOADS}
            for name, load in extra_loads:
                for side in [s for s in stack.sides if s.metrics_port]:
                    row = run_once(stack, side, by_name[name], load, duration, work)
                    rows.append(row)
                    _print_row(row)
            print("\nEnvoy's ext_proc trouble counters over the whole run (non-zero only):")
            for side in stack.sides:
                print(f"  {side.transport:17} {envoy_extproc_trouble(side) or 'none'}")
            if profile:
                for side in stack.sides:
                    print(f"\n== py-spy of {side.transport} (json workload) ==")
                    print(_profile(stack, side, workloads[0], connections, duration, work))
        except BaseException:
            for proc in stack.procs:
                if not proc.alive():
                    print(f"--- {proc.name} exited; log tail:\n{proc.log()[-2000:]}")
            raise
        finally:
            stack.stop()
    return rows


def _profile(
    stack: BenchStack, side: Side, wl: Workload, connections: int, duration: float, work: Path
) -> str:
    """py-spy (raw collapsed stacks) under load; self and total time per function, top 25."""
    out = work / f"pyspy-{side.transport}.txt"
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "-p",
            str(side.tokenbook.proc.pid),
            "-d",
            str(int(duration)),
            "-r",
            "250",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    run_once(stack, side, wl, connections, duration, work)
    spy.wait(duration + 30)
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    cats: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        count = int(count_text)
        # "func (path/file.py:123)" -> "func (file path)", lines merged
        frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack_text.split(";")]
        frames = [re.sub(r" \(.*?/(site-packages|src|python3\.\d+)/", " (", fr) for fr in frames]
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        cat = _category(frames[-1])
        cats[cat] = cats.get(cat, 0) + count
        for fr in set(frames):
            total[fr] = total.get(fr, 0) + count
    lines = [f"{samples} samples. Self time by where it is spent:"]
    for cat, c in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * c / samples:5.1f}%  {cat}")
    lines.append("Top functions, self% / total%:")
    for fr, c in sorted(own.items(), key=lambda kv: -kv[1])[:20]:
        lines.append(f"  {100 * c / samples:5.1f} {100 * total[fr] / samples:5.1f}  {fr}")
    return "\n".join(lines)


_CATEGORIES = (
    ("(tokenbook/extproc/h2/", "HTTP/2 + gRPC framing (tokenbook h2)"),
    ("(tokenbook/extproc/h2_transport", "HTTP/2 + gRPC framing (tokenbook h2)"),
    ("(grpc/", "grpcio (grpc.aio, cygrpc)"),
    ("(tokenbook/extproc/grpc_transport", "grpcio (grpc.aio, cygrpc)"),
    ("(google/protobuf/", "protobuf"),
    ("(tokenbook/ledger/", "ledger + spend (Redis writes)"),
    ("(redis/", "ledger + spend (Redis writes)"),
    ("(prometheus_client/", "metrics"),
    ("(tokenbook/", "gate / meter / usage / pricing"),
    ("(genai_prices/", "gate / meter / usage / pricing"),
    ("(orjson", "gate / meter / usage / pricing"),
    ("(selectors.py", "event loop: waiting for I/O"),
    ("(asyncio/selector_events.py", "socket I/O (asyncio transports)"),
    ("(asyncio/", "asyncio machinery (tasks, callbacks)"),
    ("(threading.py", "other threads"),
)


def _category(frame: str) -> str:
    for marker, name in _CATEGORIES:
        if marker in frame:
            return name
    return "other"


def _print_row(row: Row) -> None:
    print(
        f"  {row.transport:7} {row.workload:10} c{row.connections:<4} {row.rps:8.0f} req/s"
        f"  p50 {row.p50_ms:6.1f} ms  tokenbook {row.tokenbook_us:7.0f} µs/req"
        f"  envoy {row.envoy_us:5.0f} µs/req  lost {row.lost}/{row.completed}"
        f"  failed {row.failed}  steal {100 * row.steal:.0f}%",
        flush=True,
    )


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def table(rows: Sequence[Row]) -> str:
    """Medians per (transport, workload, connections), and the per-chunk slope."""
    keys = sorted({(r.workload, r.connections, r.transport) for r in rows})
    out = [
        "| setup | workload | conns | req/s | p50 ms | ext_proc CPU µs/req "
        "| Envoy CPU µs/req | lost / completed | failed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    per: dict[tuple[str, str, int], float] = {}
    for wl, conns, transport in keys:
        sel = [
            r for r in rows if (r.workload, r.connections, r.transport) == (wl, conns, transport)
        ]
        us = _median([r.tokenbook_us for r in sel])
        per[(transport, wl, conns)] = us
        lo, hi = min(r.tokenbook_us for r in sel), max(r.tokenbook_us for r in sel)
        out.append(
            f"| {transport} | {wl} | {conns} | {_median([r.rps for r in sel]):,.0f} "
            f"| {_median([r.p50_ms for r in sel]):.1f} | {us:,.0f} ({lo:,.0f}–{hi:,.0f}) "
            f"| {_median([r.envoy_us for r in sel]):,.0f} "
            f"| {sum(r.lost for r in sel)} / {sum(r.completed for r in sel)} "
            f"| {sum(r.failed for r in sel)} |"
        )
    for transport in sorted({r.transport for r in rows}):
        for conns in sorted({r.connections for r in rows}):
            a, b = per.get((transport, "stream-3", conns)), per.get((transport, "stream-33", conns))
            if a is not None and b is not None:
                out.append(
                    f"\n{transport}, c{conns}: one more streamed chunk costs "
                    f"{(b - a) / 30:,.1f} µs of ext_proc CPU"
                )
    return "\n".join(out)


# -- the frame layers alone -------------------------------------------------------------------


def frame_layers(streams: int = 3000) -> str:
    """µs of CPU per gRPC stream: python-hyper `h2` against tokenbook's `ServerConnection`."""
    import h2.config
    import h2.connection
    import h2.events

    from tokenbook.extproc.h2.connection import ServerConnection
    from tokenbook.extproc.h2.grpc_wire import OK_TRAILERS, RESPONSE_HEADERS

    request = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/envoy.service.ext_proc.v3.ExternalProcessor/Process"),
        (":authority", "tokenbook_extproc"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-tokenbook-filter", "gate"),
        ("x-envoy-internal", "true"),
    ]
    message = b"\x00" + (700).to_bytes(4, "big") + b"m" * 700
    answer = b"\x00" + (300).to_bytes(4, "big") + b"a" * 300

    def client_bytes(table_size: int) -> list[bytes]:
        """What a real HTTP/2 client (h2, as client) sends for `streams` streams, to a server
        advertising `table_size` for HPACK (tokenbook: 0; h2's default: 4096, its best case)."""
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.update_settings(
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24,
            }
        )
        client.increment_flow_control_window(2**31 - 1 - 65_535)  # answers never block
        chunks = [client.data_to_send()]
        # the server's settings and an ack, as a real server would send them
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        server.update_settings(  # what tokenbook's server advertises
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100_000,
                h2.settings.SettingCodes.HEADER_TABLE_SIZE: table_size,
            }
        )
        server.receive_data(chunks[0])
        server.increment_flow_control_window(2**31 - 1 - 65_535)  # room for every stream
        client.receive_data(server.data_to_send())
        chunks.append(client.data_to_send())
        for _ in range(streams):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, request)
            client.send_data(sid, message)
            client.end_stream(sid)
            chunks.append(client.data_to_send())
            client.streams.pop(sid, None)  # forget it: we never read the answers
        return chunks

    h2_chunks = client_bytes(4096)
    our_chunks = client_bytes(0)

    def run_h2() -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100_000})
        for chunk in h2_chunks:
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.RequestReceived):
                    sid = event.stream_id
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    conn.send_headers(sid, [(k.decode(), v.decode()) for k, v in RESPONSE_HEADERS])
                    conn.send_data(sid, answer)
                    conn.send_headers(
                        sid, [(k.decode(), v.decode()) for k, v in OK_TRAILERS], end_stream=True
                    )
            conn.data_to_send()

    class Events:
        def __init__(self) -> None:
            self.conn: ServerConnection | None = None

        def on_request(self, stream: Any, headers: Any, end_stream: bool) -> None:
            pass

        def on_data(self, stream: Any, data: bytes, end_stream: bool, flow_len: int) -> None:
            assert self.conn is not None
            self.conn.consumed(stream, flow_len)
            if end_stream:
                self.conn.send_headers(stream, RESPONSE_HEADERS)
                self.conn.send_data(stream, answer)
                self.conn.send_headers(stream, OK_TRAILERS, end_stream=True)

        def on_trailers(self, stream: Any, headers: Any) -> None:
            pass

        def on_stream_closed(self, stream: Any, code: Any) -> None:
            pass

        def on_ping_ack(self, payload: bytes) -> None:
            pass

        def on_goaway(self, last: int, code: int) -> None:
            pass

    def run_ours() -> None:
        events = Events()
        conn = ServerConnection(events)
        events.conn = conn
        conn.initiate()
        for chunk in our_chunks:
            conn.receive(chunk)
            conn.data_to_send()
        assert conn.error is None, conn.error

    out = []
    results = {}
    for name, fn in (("h2 (python-hyper)", run_h2), ("tokenbook ServerConnection", run_ours)):
        fn()  # warm up
        t0 = time.process_time()
        fn()
        results[name] = (time.process_time() - t0) / streams * 1e6
        out.append(f"{name:28} {results[name]:7.1f} µs of CPU per gRPC stream")
    profiler = cProfile.Profile()
    profiler.runcall(run_h2)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    out.append("\ncProfile of the h2 run (tottime), top 15:")
    out.append("\n".join(text.getvalue().splitlines()[6:28]))
    return "\n".join(out)


# -- entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument(
        "--setups",
        default=",".join(SETUPS),
        help="tokenbook-T and noop-T (no-op processors: the transport's own cost), T in "
        + "|".join(TRANSPORTS),
    )
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument(
        "--loads",
        default="json:96,stream-33:256",
        help="extra WORKLOAD:CONNECTIONS runs of tokenbook (overload: are observations lost?)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy each transport under load")
    p.add_argument("--frames-only", action="store_true", help="only the frame-layer comparison")
    p.add_argument("--stream-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--noop-server", metavar="HOST:PORT", help=argparse.SUPPRESS)
    p.add_argument("--noop-transport", default="h2", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.stream_upstream:
        asyncio.run(_serve_stream_upstream(ns.stream_upstream, 0.005))
        return 0
    if ns.noop_server:
        asyncio.run(_serve_noop(ns.noop_server, ns.noop_transport))
        return 0
    print("== frame layers: the same bytes of 3,000 gRPC streams ==")
    print(frame_layers())
    if ns.frames_only:
        return 0
    print("\n== behind Envoy (wrk -t1): tokenbook serve and no-op processors, per transport ==")
    rows = measure(
        setups=[t for t in ns.setups.split(",") if t],
        connections=ns.connections,
        duration=ns.duration,
        passes=ns.passes,
        profile=ns.profile,
        extra_loads=[(x.split(":")[0], int(x.split(":")[1])) for x in ns.loads.split(",") if x],
    )
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    raise SystemExit(main())
