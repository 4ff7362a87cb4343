"""`make bench`: tokenbook against plain Envoy and a no-op ext_proc, on this machine.

    python bench/run.py                     # ~10 minutes, prints tables, writes JSON
    python bench/run.py --budget-s 120      # a quick look (fewer, shorter runs)
    python bench/run.py --profile           # py-spy every tokenbook and no-op setup (SVGs)
    python bench/run.py --profile none      # no profile (by default: the first transport
                                            # that misses an issue-6 target)

Setups, each behind its own Envoy gateway rendered by `tokenbook envoy-config` (access log off,
`--concurrency 1`), all running at once and measured round-robin so that the machine's noise
hits every setup alike:

- ``plain``            Envoy, no ext_proc filter;
- ``noop-<t>``         Envoy + `bench/noop_extproc.py` on transport t, same filters and phases;
- ``tokenbook-<t>``    Envoy + `tokenbook serve` (gate + meter, key registry in Redis, real
                       pricing, metrics on), for every transport `tokenbook serve --help` lists
                       (grpc, and h2 once `--transport` exists);
- ``tokenbook-<t>-w<N>`` with ``--workers N`` (and `tokenbook envoy-config --workers N`).

Upstreams that are never the bottleneck: a second Envoy answering with `direct_response` (the
recorded OpenAI JSON, or a 30-event SSE body), and `bench/stream_upstream.py` streaming 30
events 5 ms apart. Workloads (wrk, one thread): ``json_c1``, ``json_c32``, ``sse_c32``,
``stream_c32`` (cN = N connections), then a time-to-first-byte probe on streams, then RSS with
1,000 concurrent streams held open. Everything listens on 127.0.0.1, on free ports; every
process is ours and is stopped by PID.

Figures: req/s, p50/p99, CPU µs per request of Envoy and of the ext_proc process (utime+stime
deltas from /proc over the run / requests), observations lost (requests completed vs
`tokenbook_requests_total` booked), hypervisor steal during the run. Repeated passes, medians
with min-max; ratios are taken within a pass, then their median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def _ensure_venv() -> None:
    """Re-run under the project's venv when started with another Python (`python bench/run.py`)."""
    try:
        import tokenbook  # noqa: F401
    except ImportError:
        # (compare prefixes: the venv's python is a symlink to the system one)
        if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parents[1].resolve():
            os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
        raise SystemExit("bench: tokenbook is not importable; run `make install` first") from None


_ensure_venv()

import benchkey  # noqa: E402
import envoy_setups  # noqa: E402
import procstat  # noqa: E402
import profile_parts  # noqa: E402
import report  # noqa: E402
import stream_upstream  # noqa: E402
import ttfb  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tokenbook.loop import loop_name  # noqa: E402
from tokenbook.testing.stack import (  # noqa: E402
    ManagedProcess,
    executable,
    free_port,
    http_get,
    wait_until,
)

CORPUS = REPO / "tests" / "corpus"
PATH = "/openai/v1/chat/completions"
WORKLOADS: dict[str, dict[str, Any]] = {
    "json_c1": {"connections": 1, "body": "json", "headers": {}},
    "json_c32": {"connections": 32, "body": "json", "headers": {}},
    "sse_c32": {"connections": 32, "body": "stream", "headers": {"x-bench-upstream": "sse"}},
    "stream_c32": {
        "connections": 32,
        "body": "stream",
        "headers": {"x-bench-upstream": "stream"},
    },
}
JSON_REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Summarise the news about OpenLLMetry."}],
}
STREAM_REQUEST = {
    "model": "gpt-5-nano",
    "stream": True,
    "messages": [{"role": "user", "content": "Count to thirty."}],
}
SSE_EVENTS = 30
# The profile after the passes: these workloads, PROFILE_S of wrk each, per profiled setup.
PROFILE_WORKLOADS = ("json_c32", "stream_c32")
PROFILE_S = 10
PROFILE_COST_S = 2 * 12.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def tcp_open(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def start_envoy(name: str, config: Path, admin_port: int, work: Path) -> ManagedProcess:
    proc = ManagedProcess(
        name,
        [
            executable("envoy"),
            "-c",
            str(config),
            "--base-id",
            str(admin_port),
            "--log-level",
            "warning",
            "--concurrency",
            "1",
        ],
        work,
    ).start()
    proc.wait_ready(lambda: http_get(f"http://127.0.0.1:{admin_port}/ready")[0] == 200, 30)
    return proc


def free_ports(n: int) -> int:
    """A port P with P+1 .. P+n-1 free too (`serve --workers N` listens on port + index)."""
    import socket

    for _ in range(100):
        port = free_port()
        try:
            for p in range(port + 1, port + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no {n} consecutive free ports")


def serve_help() -> str:
    done = subprocess.run(
        [executable("tokenbook"), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    return done.stdout


def serve_transports(help_text: str) -> list[str]:
    """The transports `tokenbook serve` offers ([] when it has no --transport flag)."""
    m = re.search(r"--transport\s+\{([^}]+)\}", help_text)
    if m:
        return [t.strip() for t in m.group(1).split(",")]
    return ["grpc", "h2"] if "--transport" in help_text else []


@dataclass
class Setup:
    name: str
    kind: str  # plain | noop | tokenbook
    transport: str | None = None
    workers: int = 1
    gateway_port: int = 0
    envoy: ManagedProcess | None = None
    extproc: ManagedProcess | None = None
    metrics_port: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def extproc_pid(self) -> int | None:
        if self.extproc is None or self.extproc.proc is None:
            return None
        return self.extproc.proc.pid

    @property
    def envoy_pid(self) -> int:
        assert self.envoy is not None
        assert self.envoy.proc is not None
        return self.envoy.proc.pid


class Bench:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.work = ns.results / f"run-{stamp}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.procs: list[ManagedProcess] = []
        self.setups: list[Setup] = []
        self.key = ""
        self.bodies: dict[str, Path] = {}
        self.started = time.monotonic()
        self.serve_help = serve_help()

    # ------------------------------------------------------------------ lifecycle

    def _keep(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with suppress(Exception):
                proc.stop(10)

    def start_common(self) -> None:
        self.redis_port = free_port()
        redis = self._keep(
            ManagedProcess(
                "redis",
                [
                    executable("redis-server"),
                    "--port",
                    str(self.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.work),
                ],
                self.work,
            ).start()
        )
        redis.wait_ready(lambda: tcp_open(self.redis_port), 15)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.key = benchkey.issue_key(self.redis_url, agent="wrk", team="perf")

        self.bodies = {
            "json": self.work / "request_json.json",
            "stream": self.work / "request_stream.json",
        }
        self.bodies["json"].write_text(json.dumps(JSON_REQUEST))
        self.bodies["stream"].write_text(json.dumps(STREAM_REQUEST))

        self.stream_port = free_port()
        stream = self._keep(
            ManagedProcess(
                "stream-upstream",
                [
                    sys.executable,
                    str(HERE / "stream_upstream.py"),
                    "--port",
                    str(self.stream_port),
                    "--corpus",
                    str(CORPUS),
                    "--chunks",
                    str(SSE_EVENTS),
                ],
                self.work,
            ).start()
        )
        stream.wait_ready(lambda: tcp_open(self.stream_port), 15)

        self.upstream_port, admin = free_port(), free_port()
        json_body = (CORPUS / envoy_setups.JSON_FIXTURE).read_bytes()
        sse_body = b"".join(stream_upstream.sse_events(CORPUS, SSE_EVENTS))
        cfg = envoy_setups.write_yaml(
            self.work / "upstream.yaml",
            envoy_setups.upstream_config(self.upstream_port, admin, json_body, sse_body),
        )
        self._keep(start_envoy("upstream-envoy", cfg, admin, self.work))

    def loop_for(self, setup: Setup) -> str:
        """The event loop of a setup: tokenbook and its no-op yardstick always share it
        (`tokenbook.loop`: uvloop for h2 when installed, asyncio for grpcio)."""
        if self.ns.loop != "auto":
            return str(self.ns.loop)
        return loop_name("auto", setup.transport or "grpcio")

    def start_extproc(self, setup: Setup) -> str:
        """Start the processor of a setup; its address for the Envoy cluster."""
        port = free_ports(setup.workers)
        if setup.kind == "noop":
            argv = [
                sys.executable,
                str(HERE / "noop_extproc.py"),
                "--listen",
                f"127.0.0.1:{port}",
                "--transport",
                setup.transport or "grpc",
            ]
            if self.loop_for(setup) == "uvloop":
                argv.append("--uvloop")
            proc = self._keep(ManagedProcess(setup.name, argv, self.work).start())
            proc.wait_ready(lambda: tcp_open(port), 30)
        else:
            setup.metrics_port = free_port()
            argv = [
                executable("tokenbook"),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{setup.metrics_port}",
                "--redis-url",
                self.redis_url,
                "--log-level",
                "warning",
                "--drain-timeout",
                "2",
            ]
            if setup.transport and "--transport" in self.serve_help:
                argv += ["--transport", setup.transport]
            if "--loop" in self.serve_help:
                argv += ["--loop", self.loop_for(setup)]
            if setup.workers > 1:
                argv += ["--workers", str(setup.workers)]
                argv += setup.extra.get("serve_args", [])
            proc = self._keep(ManagedProcess(setup.name, argv, self.work).start())
            ports = range(port, port + setup.workers)
            proc.wait_ready(
                lambda: self.scrape(setup) is not None and all(tcp_open(p) for p in ports), 60
            )
        setup.extproc = proc
        return f"127.0.0.1:{port}"

    def start_setup(self, setup: Setup) -> None:
        extproc = None if setup.kind == "plain" else self.start_extproc(setup)
        setup.gateway_port, admin = free_port(), free_port()
        options: dict[str, Any] = dict(setup.extra.get("envoy_options", {}))
        doc = envoy_setups.gateway_config(
            listen_port=setup.gateway_port,
            admin_port=admin,
            upstream_port=self.upstream_port,
            stream_port=self.stream_port,
            extproc=extproc,
            options=options,
        )
        cfg = envoy_setups.write_yaml(self.work / f"gateway-{setup.name}.yaml", doc)
        setup.envoy = self._keep(start_envoy(f"envoy-{setup.name}", cfg, admin, self.work))
        # one request through it, to fail early on a broken setup
        status, _ = asyncio.run(self.one_request(setup, "json"))
        if status != 200:
            raise RuntimeError(f"{setup.name}: a test request got HTTP {status}")

    async def one_request(self, setup: Setup, body: str) -> tuple[int, float]:
        t = await ttfb.one_stream(
            "127.0.0.1",
            setup.gateway_port,
            PATH,
            self.bodies[body].read_bytes(),
            {"authorization": f"Bearer {self.key}", "content-type": "application/json"},
        )
        return t.status, t.total_s

    # ------------------------------------------------------------------ measuring

    def scrape(self, setup: Setup) -> dict[str, float] | None:
        """tokenbook_requests_total summed by outcome (None when /metrics does not answer)."""
        if not setup.metrics_port:
            return None
        try:
            status, body = http_get(f"http://127.0.0.1:{setup.metrics_port}/metrics")
        except OSError:
            return None
        if status != 200:
            return None
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            if family.name != "tokenbook_requests":
                continue
            for s in family.samples:
                if s.name == "tokenbook_requests_total":
                    outcome = s.labels.get("outcome", "")
                    out[outcome] = out.get(outcome, 0.0) + s.value
        return out

    def wrk(self, setup: Setup, workload: str, duration_s: float) -> dict[str, Any]:
        w = WORKLOADS[workload]
        env = {
            **os.environ,
            "BENCH_BODY": str(self.bodies[w["body"]]),
            "BENCH_KEY": self.key,
            "BENCH_HEADERS": ";".join(f"{k}: {v}" for k, v in w["headers"].items()),
        }
        argv = [
            self.ns.wrk,
            "-t1",
            f"-c{w['connections']}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "post.lua"),
            f"http://127.0.0.1:{setup.gateway_port}{PATH}",
        ]
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=duration_s + 60
        )
        for line in done.stdout.splitlines():
            if line.startswith("BENCHJSON "):
                result: dict[str, Any] = json.loads(line.removeprefix("BENCHJSON "))
                return result
        raise RuntimeError(f"wrk gave no result: {done.stdout[-2000:]} {done.stderr[-2000:]}")

    def measure(
        self, setup: Setup, workload: str, duration_s: float, pass_no: int
    ) -> dict[str, Any]:
        booked_before = self.scrape(setup)
        env0 = procstat.tree_cpu_seconds(setup.envoy_pid)
        pid = setup.extproc_pid
        ext0 = procstat.tree_cpu_seconds(pid) if pid else 0.0
        sys0 = procstat.SystemCpu.read()
        t0 = time.monotonic()
        res = self.wrk(setup, workload, duration_s)
        wall = time.monotonic() - t0
        sys1 = procstat.SystemCpu.read()
        time.sleep(self.ns.settle_s)  # let the meter book the last responses
        env1 = procstat.tree_cpu_seconds(setup.envoy_pid)
        ext1 = procstat.tree_cpu_seconds(pid) if pid else 0.0
        booked_after = self.scrape(setup)
        n = res["requests"]
        errors = sum(res[k] for k in res if k.startswith("errors_"))
        row: dict[str, Any] = {
            "pass": pass_no,
            "setup": setup.name,
            "kind": setup.kind,
            "transport": setup.transport,
            "workers": setup.workers,
            "workload": workload,
            "connections": WORKLOADS[workload]["connections"],
            "duration_s": res["duration_us"] / 1e6,
            "wall_s": wall,
            "requests": n,
            "errors": errors,
            "error_share": errors / n if n else None,
            "rps": n / (res["duration_us"] / 1e6) if res["duration_us"] else None,
            "p50_ms": res["p50_us"] / 1000,
            "p90_ms": res["p90_us"] / 1000,
            "p99_ms": res["p99_us"] / 1000,
            "envoy_cpu_us": (env1 - env0) * 1e6 / n if n else None,
            "extproc_cpu_us": (ext1 - ext0) * 1e6 / n if n and pid else None,
            "steal_share": sys0.steal_share(sys1),
            "wrk": res,
        }
        row["total_cpu_us"] = (row["envoy_cpu_us"] or 0) + (row["extproc_cpu_us"] or 0) or None
        if booked_before is not None and booked_after is not None:
            delta = {
                k: booked_after.get(k, 0.0) - booked_before.get(k, 0.0)
                for k in set(booked_after) | set(booked_before)
            }
            ok = delta.get("ok", 0.0)
            row["booked"] = delta
            row["booked_ok"] = ok
            row["booked_other"] = sum(delta.values()) - ok
            # Requests wrk saw complete minus those booked as ok (requests cut at wrk's end are
            # booked as aborted, and are not in wrk's count).
            row["lost"] = max(0.0, (n - res["errors_status"]) - ok)
        return row

    def ttfb(self, setup: Setup, pass_no: int) -> list[dict[str, Any]]:
        body = self.bodies["stream"].read_bytes()
        headers = {
            "authorization": f"Bearer {self.key}",
            "content-type": "application/json",
            "x-bench-upstream": "stream",
        }
        rows = []
        for conc, rounds in ((1, self.ns.ttfb_single), (32, self.ns.ttfb_rounds)):
            timings = asyncio.run(
                ttfb.probe(
                    "127.0.0.1",
                    setup.gateway_port,
                    PATH,
                    body,
                    headers,
                    concurrency=conc,
                    rounds=rounds,
                )
            )
            ok = [t for t in timings if t.status == 200]
            rows.append(
                {
                    "pass": pass_no,
                    "setup": setup.name,
                    "concurrency": conc,
                    "streams": len(timings),
                    "failed": len(timings) - len(ok),
                    "ttfb_ms": sorted(1000 * t.ttfb_s for t in ok),
                    "total_ms": sorted(1000 * t.total_s for t in ok),
                }
            )
        return rows

    def rss_at_streams(self, setup: Setup, streams: int) -> dict[str, Any]:
        pid = setup.extproc_pid
        assert pid is not None
        before = self.scrape(setup)
        idle = procstat.tree_rss_bytes(pid)
        envoy_idle = procstat.tree_rss_bytes(setup.envoy_pid)
        headers = {
            "authorization": f"Bearer {self.key}",
            "content-type": "application/json",
            "x-bench-upstream": "stream",
            "x-bench-first-ms": "5",
            "x-bench-delay-ms": "1000",
            "x-bench-chunks": "60",
        }

        async def sampler() -> object:
            peak = peak_envoy = 0
            for _ in range(5):
                peak = max(peak, procstat.tree_rss_bytes(pid))
                peak_envoy = max(peak_envoy, procstat.tree_rss_bytes(setup.envoy_pid))
                await asyncio.sleep(0.2)
            return (peak, peak_envoy)

        t0 = time.monotonic()
        held = asyncio.run(
            ttfb.hold_open(
                "127.0.0.1",
                setup.gateway_port,
                PATH,
                self.bodies["stream"].read_bytes(),
                headers,
                streams=streams,
                open_timeout_s=45,
                ramp=self.ns.rss_ramp,
                sampler=sampler,
            )
        )
        assert isinstance(held.sample, tuple)
        peak, peak_envoy = held.sample
        booked = after = None
        if setup.kind == "tokenbook":
            # The cut streams are booked as aborted once Envoy tells the meter.
            with suppress(TimeoutError):
                wait_until(lambda: self._booked_since(setup, before) >= held.opened, 20, "booked")
            after = self.scrape(setup)
            booked = self._booked_since(setup, before)
        return {
            "setup": setup.name,
            "streams": streams,
            "opened": held.opened,
            "failed": held.failed,
            "open_s": held.open_s,
            "rss_idle_mb": idle / 2**20,
            "rss_mb": peak / 2**20,
            "per_stream_kb": (peak - idle) / 1024 / max(1, held.opened),
            "envoy_rss_idle_mb": envoy_idle / 2**20,
            "envoy_rss_mb": peak_envoy / 2**20,
            "booked": booked,
            "booked_by_outcome": after,
            "wall_s": time.monotonic() - t0,
        }

    def _booked_since(self, setup: Setup, before: Mapping[str, float] | None) -> float:
        now = self.scrape(setup) or {}
        return sum(now.values()) - sum((before or {}).values())

    def profile(self, setup: Setup, duration_s: float) -> dict[str, Any]:
        """py-spy record of the processor during a json_c32 run (an SVG flame graph)."""
        pid = setup.extproc_pid
        assert pid is not None
        pyspy = Path(sys.executable).parent / "py-spy"
        if not pyspy.exists():
            return {"setup": setup.name, "error": "py-spy not installed in the venv"}
        out = {}
        for workload in PROFILE_WORKLOADS:
            svg = self.work / f"profile-{setup.name}-{workload}.svg"
            raw = self.work / f"profile-{setup.name}-{workload}.txt"
            targets = procstat.tree(pid)
            spies = [
                subprocess.Popen(
                    [
                        str(pyspy),
                        "record",
                        "--pid",
                        str(p),
                        "--duration",
                        str(round(duration_s)),
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--format",
                        fmt,
                        "-o",
                        str(path),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for p in targets[-1:]
                for fmt, path in (("flamegraph", svg), ("raw", raw))
            ]
            time.sleep(0.5)
            self.wrk(setup, workload, duration_s)
            for spy in spies:
                spy.wait(60)
            out[workload] = {"svg": str(svg), "raw": str(raw), "top": top_frames(raw)}
        return {"setup": setup.name, **out}


def profile_setups(
    mode: str, setups: Sequence[Setup], target_rows: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[Setup]:
    """The tokenbook setups to profile: every one ('all'), none, or ('auto') the one of the
    first transport (h2 first) whose run missed an issue-6 target, so that a run which misses
    a target also shows where tokenbook's time went."""
    tokenbook = [s for s in setups if s.kind == "tokenbook"]
    if mode == "all":
        # The no-ops too: their transport part is the yardstick for tokenbook's.
        return tokenbook + [s for s in setups if s.kind == "noop"]
    if mode == "none":
        return []
    for transport, rows in target_rows.items():
        if any(r["met"] is False for r in rows):
            return [s for s in tokenbook if s.transport == transport and s.workers == 1][:1]
    return []


def top_frames(raw: Path, n: int = 25) -> list[tuple[str, float]]:
    """Self time per function from py-spy's raw (collapsed stack) output, as shares."""
    if not raw.exists():
        return []
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    return [(k, v / total) for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:n]]


@contextmanager
def raised_fd_limit(want: int) -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(hard, max(soft, want)) if hard != resource.RLIM_INFINITY else max(soft, want)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    try:
        yield new
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def plan_setups(ns: argparse.Namespace, transports: Sequence[str]) -> list[Setup]:
    setups = [Setup("plain", "plain")]
    for t in transports:
        if "noop" in ns.kinds:
            setups.append(Setup(f"noop-{t}", "noop", t))
        if "tokenbook" in ns.kinds:
            setups.append(Setup(f"tokenbook-{t}", "tokenbook", t))
        for w in ns.workers:
            if w > 1:
                setups.append(
                    Setup(
                        f"tokenbook-{t}-w{w}",
                        "tokenbook",
                        t,
                        workers=w,
                        extra={"envoy_options": {"workers": w}},
                    )
                )
    return setups


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=600, help="total time budget (default 600)")
    p.add_argument("--passes", type=int, default=3, help="round-robin passes (default 3)")
    p.add_argument(
        "--transports",
        default="auto",
        help="comma-separated transports, or 'auto': every one `tokenbook serve` lists",
    )
    p.add_argument(
        "--kinds", default="noop,tokenbook", help="processor setups besides plain (default both)"
    )
    p.add_argument(
        "--workers",
        default="",
        help="also run tokenbook with --workers N, e.g. '2' or '2,3' (needs that flag)",
    )
    p.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}"
    )
    p.add_argument("--rss-streams", type=int, default=1000, help="0 skips the RSS test")
    p.add_argument(
        "--rss-ramp", type=int, default=50, help="streams being opened at once in the RSS test"
    )
    p.add_argument("--ttfb-single", type=int, default=30, help="single-stream TTFB samples")
    p.add_argument("--ttfb-rounds", type=int, default=2, help="rounds of 32 concurrent streams")
    p.add_argument("--settle-s", type=float, default=0.5)
    p.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop of tokenbook and the no-op alike (default auto: uvloop for h2)",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        choices=["auto", "all", "none"],
        default="auto",
        const="all",
        help="py-spy tokenbook under load after the passes: 'auto' (default) profiles the first"
        " transport that misses an issue-6 target, 'all' (or a bare --profile) every tokenbook"
        " and no-op setup, 'none' none",
    )
    p.add_argument(
        "--serve-only", action="store_true", help="start the setups, print them, wait (Ctrl-C)"
    )
    p.add_argument("--wrk", default="wrk")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--out", type=Path, default=None, help="JSON (default results/latest.json)")
    ns = p.parse_args(argv)
    ns.kinds = {k.strip() for k in ns.kinds.split(",") if k.strip()}
    ns.workers = [int(w) for w in ns.workers.split(",") if w.strip()]
    workloads = [w.strip() for w in ns.workloads.split(",") if w.strip()]
    if unknown := set(workloads) - set(WORKLOADS):
        p.error(f"unknown workloads {sorted(unknown)}")

    with raised_fd_limit(max(8192, 4 * ns.rss_streams + 1024)) as nofile:
        bench = Bench(ns)
        offered = serve_transports(bench.serve_help)
        if ns.transports == "auto":
            transports = offered or ["grpc"]
        else:
            transports = [t.strip() for t in ns.transports.split(",") if t.strip()]
        if ns.workers and "--workers" not in bench.serve_help:
            p.error("`tokenbook serve` has no --workers flag")
        setups = plan_setups(ns, transports)
        log(f"work dir {bench.work}; setups: {', '.join(s.name for s in setups)}")
        try:
            return run(bench, setups, workloads, transports, offered, nofile)
        finally:
            bench.stop()


def run(
    bench: Bench,
    setups: list[Setup],
    workloads: list[str],
    transports: list[str],
    offered: list[str],
    nofile: int,
) -> int:
    ns = bench.ns
    bench.start_common()
    for s in setups:
        bench.start_setup(s)
        log(f"started {s.name}")
    startup_s = time.monotonic() - bench.started
    if ns.serve_only:
        return serve_only(bench, setups)

    # Budget: the RSS tests and the profile are fixed costs; the rest is split over passes.
    rss_setups = (
        [s for s in setups if s.kind != "plain" and s.workers == 1] if ns.rss_streams else []
    )
    profiled = {"all": len([s for s in setups if s.kind != "plain"]), "auto": 1, "none": 0}
    fixed = 15.0 * len(rss_setups) + PROFILE_COST_S * profiled[ns.profile]
    ttfb_cost = 0.25 * ns.ttfb_single + 0.3 * ns.ttfb_rounds + 1.0
    per_pass = (ns.budget_s - startup_s - fixed - 3.0 * len(setups)) / max(1, ns.passes)
    per_setup = per_pass / len(setups)
    overhead = ns.settle_s + 0.7
    duration = (per_setup - ttfb_cost - overhead * len(workloads)) / len(workloads)
    duration = max(2.0, min(30.0, duration))
    log(f"startup {startup_s:.0f}s; {ns.passes} passes, {duration:.1f}s per wrk run")

    for s in setups:  # warm up: connections, caches, JIT-less Python's first-call costs
        for w in ("json_c32", "stream_c32"):
            bench.wrk(s, w, 1)
    runs: list[dict[str, Any]] = []
    ttfbs: list[dict[str, Any]] = []
    deadline = bench.started + ns.budget_s
    for pass_no in range(ns.passes):
        order = setups[pass_no % len(setups) :] + setups[: pass_no % len(setups)]
        for s in order:
            for w in workloads:
                row = bench.measure(s, w, duration, pass_no)
                runs.append(row)
                log(
                    f"pass {pass_no} {s.name:<22} {w:<10} {row['rps']:8.0f} req/s "
                    f"p50 {row['p50_ms']:6.2f} ms  envoy {row['envoy_cpu_us'] or 0:6.0f} µs  "
                    f"ext_proc {row['extproc_cpu_us'] or 0:6.0f} µs  errors {row['errors']}"
                    + (f"  lost {row['lost']:.0f}" if "lost" in row else "")
                )
            ttfbs += bench.ttfb(s, pass_no)
        remaining = deadline - time.monotonic() - fixed
        if pass_no + 1 < ns.passes and remaining < per_pass * 0.8:
            log(f"stopping after {pass_no + 1} passes: the time budget is spent")
            break

    rss = []
    for s in rss_setups:
        try:
            rss.append(bench.rss_at_streams(s, ns.rss_streams))
            log(f"rss {s.name}: {rss[-1]['rss_mb']:.0f} MB at {rss[-1]['opened']} streams")
        except Exception as exc:  # report it, keep the rest of the results
            rss.append({"setup": s.name, "error": repr(exc)})
            log(f"rss {s.name}: failed: {exc!r}")
    names = [s.name for s in setups]
    pairs: list[tuple[str, str, str]] = []
    for t in transports:
        for s in setups:
            if s.kind == "tokenbook" and s.transport == t:
                if f"noop-{t}" in names:
                    pairs.append((f"{s.name} / noop-{t}", s.name, f"noop-{t}"))
                pairs.append((f"{s.name} / plain", s.name, "plain"))
        if f"noop-{t}" in names:
            pairs.append((f"noop-{t} / plain", f"noop-{t}", "plain"))
    summary = report.summarise_load(runs)
    ratio_rows = report.ratios(runs, pairs)
    ttfb_summary = summarise_ttfb(ttfbs, names)
    target_rows = {
        t: report.targets(summary, ratio_rows, ttfb_summary, transport=t, stream_events=SSE_EVENTS)
        for t in sorted(transports, key=lambda t: t != "h2")  # the default transport first
        if f"tokenbook-{t}" in names
    }
    profiles = []
    for s in profile_setups(ns.profile, setups, target_rows):
        try:
            prof = bench.profile(s, PROFILE_S)
        except Exception as exc:  # the measurements above must reach the JSON all the same
            log(f"profile {s.name}: failed: {exc!r}")
            profiles.append({"setup": s.name, "error": repr(exc)})
            continue
        for workload in PROFILE_WORKLOADS:
            info = prof.get(workload)
            if info:
                cpu = summary.get(workload, {}).get(s.name, {}).get("extproc_cpu_us")
                rows, samples = profile_parts.shares(profile_parts.read_stacks(Path(info["raw"])))
                info["parts"] = rows
                info["samples"] = samples
                info["us_per_request"] = cpu["median"] if cpu else None
        profiles.append(prof)
    doc: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).isoformat(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "envoy": subprocess.run(
                [executable("envoy"), "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "transports_offered": offered,
            "loops": {s.name: bench.loop_for(s) for s in setups if s.kind != "plain"},
            "setups": names,
            "workloads": workloads,
            "wrk_duration_s": duration,
            "passes_done": 1 + max((r["pass"] for r in runs), default=-1),
            "nofile": nofile,
            "elapsed_s": time.monotonic() - bench.started,
            "work_dir": str(bench.work),
        },
        "summary": summary,
        "ratios": ratio_rows,
        "ttfb": ttfb_summary,
        "targets": target_rows,
        "rss": rss,
        "profiles": profiles,
        "runs": runs,
        "ttfb_raw": ttfbs,
    }
    out = ns.out or ns.results / "latest.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    (bench.work / "result.json").write_text(out.read_text())
    print(render(doc))
    log(f"wrote {out} ({doc['meta']['elapsed_s']:.0f}s)")
    return 0


def serve_only(bench: Bench, setups: Sequence[Setup]) -> int:
    """Keep the setups up for manual probing or profiling, until Ctrl-C or SIGTERM."""
    import signal

    info = {
        "key": bench.key,
        "path": PATH,
        "bodies": {k: str(v) for k, v in bench.bodies.items()},
        "setups": {
            s.name: {
                "gateway": f"http://127.0.0.1:{s.gateway_port}",
                "envoy_pid": s.envoy_pid,
                "extproc_pid": s.extproc_pid,
                "metrics": f"http://127.0.0.1:{s.metrics_port}/metrics" if s.metrics_port else None,
            }
            for s in setups
        },
    }
    (bench.work / "serve-only.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with suppress(KeyboardInterrupt):
        while True:
            time.sleep(1)
    return 0


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    idx = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return sorted(values)[idx]


def summarise_ttfb(
    rows: Sequence[Mapping[str, Any]], setups: Sequence[str]
) -> list[dict[str, Any]]:
    out = []
    for name in setups:
        for conc in (1, 32):
            mine = [r for r in rows if r["setup"] == name and r["concurrency"] == conc]
            if not mine:
                continue
            firsts = sorted(x for r in mine for x in r["ttfb_ms"])
            totals = sorted(x for r in mine for x in r["total_ms"])
            out.append(
                {
                    "setup": name,
                    "concurrency": conc,
                    "streams": sum(r["streams"] for r in mine),
                    "failed": sum(r["failed"] for r in mine),
                    "ttfb_p50_ms": _pct(firsts, 0.5),
                    "ttfb_p99_ms": _pct(firsts, 0.99),
                    "total_p50_ms": _pct(totals, 0.5),
                    "per_pass_ttfb_p50_ms": [_pct(r["ttfb_ms"], 0.5) for r in mine],
                }
            )
    return out


def render(doc: Mapping[str, Any]) -> str:
    meta = doc["meta"]
    parts = [
        f"tokenbook bench — {meta['cpus']} CPUs, Python {meta['python']}, "
        f"{meta['envoy'].split('version:')[-1].strip()}",
        f"{meta['passes_done']} passes × {meta['wrk_duration_s']:.1f}s wrk runs, round-robin; "
        "median (min–max) over passes",
        "event loops: " + (", ".join(f"{k} {v}" for k, v in meta.get("loops", {}).items()) or "–"),
        "",
        report.load_table(doc["summary"], meta["setups"]),
        "",
        "Ratios within a pass (median, min–max):",
        report.ratio_table(doc["ratios"]),
    ]
    if doc["ttfb"]:
        rows = [
            [
                t["setup"],
                str(t["concurrency"]),
                str(t["streams"]),
                str(t["failed"]),
                f"{t['ttfb_p50_ms']:.2f}" if t["ttfb_p50_ms"] is not None else "–",
                f"{t['ttfb_p99_ms']:.2f}" if t["ttfb_p99_ms"] is not None else "–",
                f"{t['total_p50_ms']:.1f}" if t["total_p50_ms"] is not None else "–",
            ]
            for t in doc["ttfb"]
        ]
        parts += [
            "",
            f"Time to first byte, streaming upstream ({SSE_EVENTS} events, 5 ms apart):",
            report.table(
                [
                    "setup",
                    "concurrent",
                    "streams",
                    "failed",
                    "TTFB p50 ms",
                    "TTFB p99 ms",
                    "stream p50 ms",
                ],
                rows,
            ),
        ]
    lost_rows = []
    for workload, by_setup in doc["summary"].items():
        for setup, s in by_setup.items():
            if s.get("lost") is not None:
                lost_rows.append(
                    [
                        workload,
                        setup,
                        report.fmt(s["requests"], ranges=False),
                        report.fmt(s["booked_ok"], ranges=False),
                        report.fmt(s["booked_other"], ranges=False),
                        report.fmt(s["lost"]),
                    ]
                )
    if lost_rows:
        parts += [
            "",
            "Observations (per run, median): requests wrk completed vs booked by tokenbook:",
            report.table(
                ["workload", "setup", "completed", "booked ok", "booked other", "lost"],
                lost_rows,
            ),
        ]
    if doc["rss"]:
        rows = []
        for r in doc["rss"]:
            if "error" in r:
                rows.append([r["setup"], "error", r["error"][:60], "", "", "", ""])
                continue
            rows.append(
                [
                    r["setup"],
                    str(r["opened"]),
                    f"{r['rss_idle_mb']:.0f}",
                    f"{r['rss_mb']:.0f}",
                    f"{r['per_stream_kb']:.1f}",
                    f"{r['envoy_rss_mb']:.0f}",
                    "–" if r["booked"] is None else f"{r['booked']:.0f}",
                ]
            )
        parts += [
            "",
            "Memory with concurrent open streams (slow upstream, 1 event/s):",
            report.table(
                [
                    "setup",
                    "streams open",
                    "RSS idle MB",
                    "RSS MB",
                    "KB/stream",
                    "Envoy RSS MB",
                    "booked after cut",
                ],
                rows,
            ),
        ]
    for transport, rows in doc.get("targets", {}).items():
        parts += ["", f"Issue 6 targets, transport {transport}, from this run:"]
        parts.append(report.targets_table(rows))
        if transport == "grpcio":
            parts.append("(grpcio is the reference transport; the transport targets are h2's)")
        if any(r["met"] is False for r in rows):
            parts.append(
                "Where the time goes and what would close a missed target: docs/performance.md"
                + (
                    ", and this run's py-spy profile below."
                    if doc["profiles"]
                    else " (this run was not profiled: `--profile` adds it)."
                )
            )
    for prof in doc["profiles"]:
        if "error" in prof:
            parts += ["", f"py-spy {prof['setup']}: no profile ({prof['error']})"]
        for workload in PROFILE_WORKLOADS:
            info = prof.get(workload)
            if not info:
                continue
            if not info.get("samples"):
                parts += ["", f"py-spy {prof['setup']} {workload}: no samples ({info['raw']})"]
                continue
            us = info.get("us_per_request")
            parts += [
                "",
                f"Where {prof['setup']}'s CPU goes on {workload} (py-spy, {info['samples']}"
                f" samples; each to the innermost part it is in"
                + (f"; {us:,.0f} µs per request in this run):" if us else "):"),
            ]
            parts += profile_parts.table(info["parts"], us)
            setup = str(prof["setup"])
            noop = doc["summary"].get(workload, {}).get(setup.replace("tokenbook-", "noop-", 1), {})
            floor = profile_parts.floor_line(
                setup,
                (noop.get("extproc_cpu_us") or {}).get("median"),
                info["parts"],
                us,
            )
            if floor and setup.startswith("tokenbook-"):
                parts.append(floor)
            parts += ["", f"py-spy {prof['setup']} {workload}, top self time: {info['svg']}"]
            parts += [f"  {share * 100:5.1f}%  {name}" for name, share in info["top"][:12]]
    if any(p.get("json_c32", {}).get("samples") for p in doc["profiles"]):
        parts += ["", *profile_parts.CLOSING]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
