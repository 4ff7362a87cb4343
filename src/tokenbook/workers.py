"""`tokenbook serve --workers N`: N worker processes, one port each, one aggregated /metrics.

Python runs one core per process. A worker is a whole `tokenbook serve` (gate + meter on its own
port, ``--listen`` port + index); Envoy balances ext_proc streams over the N endpoints
(`tokenbook envoy-config --workers N` renders them, with ``LEAST_REQUEST``). Measured on 2
cores (docs/performance.md): N ports split streams evenly, while one ``SO_REUSEPORT`` port
does not: Envoy keeps one HTTP/2 connection per upstream address and the kernel balances
connections, not streams, so every stream went to one worker (and forcing new connections with
``max_requests_per_connection`` split them unevenly and cost reconnects).

The supervisor (this module's `supervise`, the process you started) owns no request path:

- it starts the workers (``python -m tokenbook.cli <the same arguments> --worker-index i``) with
  ``PROMETHEUS_MULTIPROC_DIR`` set, so every counter, gauge and histogram of every worker lands
  in one directory of memory-mapped files;
- it serves ``/metrics`` on ``--metrics-listen``: prometheus_client's `MultiProcessCollector`
  over that directory, plus `SnapshotCollector` for the custom collectors (key-cache lookups,
  budgets remaining), which each worker writes to a small text file every second;
- it restarts a worker that dies (its spool directory is its own, so it replays what it
  spooled), and gives up when one keeps dying at start (a port in use, a bad config);
- SIGTERM / SIGINT: every worker drains as a single `serve` does; then /metrics stops.

Gate and meter of one request may land on different workers: attribution travels in Envoy's
dynamic metadata, bookings are idempotent in Redis, and an admission record left on the gate's
worker is resolved at ``unbooked_timeout_s`` by the booking script without being counted as
unbooked (`tokenbook.ledger.admission`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tokenbook.settings import Settings

log = logging.getLogger("tokenbook.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_INTERVAL_S = 1.0
#: a worker that exits this soon after its start, this many times in a row, stops the service
_EARLY_EXIT_S = 5.0
_EARLY_EXITS_MAX = 3


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def worker_listen(listen: str, index: int) -> str:
    """Worker `index`'s ext_proc address: the ``--listen`` port plus the index."""
    host, port = split_host_port(listen)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port + index}"


def check_workers(settings: Settings) -> None:
    """Raise ValueError when `settings` cannot run several workers."""
    if settings.listen.startswith("unix:"):
        raise ValueError("--workers needs a HOST:PORT --listen address (one port per worker)")
    _, port = split_host_port(settings.listen)
    if port == 0:
        raise ValueError("--workers needs a fixed --listen port (workers use port + index)")
    if port + settings.workers - 1 > 65535:
        raise ValueError(f"--listen port {port} + {settings.workers} workers exceeds 65535")


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker `index`: its own port, spool directory, and no public /metrics."""
    return replace(
        settings,
        listen=worker_listen(settings.listen, index),
        # the supervisor serves /metrics; a worker's own view is on a private ephemeral port
        metrics_listen="127.0.0.1:0",
        ledger_spool_dir=str(Path(settings.ledger_spool_dir) / f"worker-{index}"),
    )


# --------------------------------------------------------------------------- metrics


def write_snapshot(registry: CollectorRegistry, directory: Path, index: int) -> None:
    """Write `registry`'s exposition text for the supervisor, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"worker-{index}.prom"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(generate_latest(registry))
    os.replace(tmp, target)


async def snapshot_loop(registry: CollectorRegistry, directory: Path, index: int) -> None:
    while True:
        try:
            write_snapshot(registry, directory, index)
        except OSError as exc:
            log.warning("cannot write the metrics snapshot: %s", exc)
        await asyncio.sleep(SNAPSHOT_INTERVAL_S)


class SnapshotCollector(Collector):
    """The workers' custom collectors, merged: counters summed, gauges at their maximum.

    (Those collectors report either counts, which add up across workers, or figures read from
    Redis, which every worker reads alike.)
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        for path in sorted(self._dir.glob("worker-*.prom")):
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation, family.type)
                for s in family.samples:
                    if s.name.endswith("_created"):
                        continue
                    key = (family.name, s.name, tuple(sorted(s.labels.items())))
                    if key not in values:
                        values[key] = s.value
                    elif family.type == "gauge":
                        values[key] = max(values[key], s.value)
                    else:
                        values[key] += s.value
        for (name, sample, labels), value in values.items():
            families[name].add_sample(sample, dict(labels), value)
        yield from families.values()


def metrics_registry(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(SnapshotCollector(directory / SNAPSHOT_DIR))
    return registry


# --------------------------------------------------------------------------- supervisor


class _Worker:
    def __init__(self, index: int, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.index = index
        self.argv = [sys.executable, "-m", "tokenbook.cli", *argv, "--worker-index", str(index)]
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.early_exits = 0

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL)


def supervise(
    settings: Settings, argv: Sequence[str], environ: Mapping[str, str], stderr: TextIO
) -> int:
    """Run `settings.workers` workers until SIGTERM / SIGINT; the exit code of `serve`."""
    try:
        check_workers(settings)
    except ValueError as exc:
        print(f"tokenbook serve: {exc}", file=stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="tokenbook-metrics-"))
    env = {**environ, MULTIPROC_ENV: str(directory)}
    host, port = split_host_port(settings.metrics_listen)
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics_registry(directory))
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        print(f"tokenbook serve: metrics {settings.metrics_listen}: {exc}", file=stderr)
        return 1
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    workers = [_Worker(i, argv, env) for i in range(settings.workers)]
    code = 0
    try:
        for w in workers:
            w.start()
        log.info(
            "tokenbook supervising %d workers on %s..%d, metrics on %s:%d",
            len(workers),
            settings.listen,
            split_host_port(settings.listen)[1] + len(workers) - 1,
            host,
            server.server_port,
        )
        code = _watch(workers, directory, stop)
    finally:
        _stop_all(workers, settings.drain_timeout_s + 10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        shutil.rmtree(directory, ignore_errors=True)
    return code


def _watch(workers: Sequence[_Worker], directory: Path, stop: threading.Event) -> int:
    while not stop.wait(0.5):
        for w in workers:
            assert w.proc is not None
            rc = w.proc.poll()
            if rc is None:
                continue
            mark_process_dead(w.proc.pid, str(directory))  # type: ignore[no-untyped-call]
            early = time.monotonic() - w.started < _EARLY_EXIT_S
            w.early_exits = w.early_exits + 1 if early else 0
            if w.early_exits >= _EARLY_EXITS_MAX:
                log.error("worker %d keeps exiting at start (code %s): stopping", w.index, rc)
                return 1
            log.warning("worker %d exited with code %s: restarting it", w.index, rc)
            w.start()
    return 0


def _stop_all(workers: Sequence[_Worker], timeout_s: float) -> None:
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --------------------------------------------------------------------------- worker


async def run_worker(settings: Settings, environ: Mapping[str, str], index: int) -> None:
    """One worker: `tokenbook serve` on its port, its custom metrics written for the supervisor."""
    from tokenbook.app import App, freeze_startup_objects

    app = App(settings, environ)
    freeze_startup_objects()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    snapshots = Path(environ.get(MULTIPROC_ENV, tempfile.gettempdir())) / SNAPSHOT_DIR
    task = asyncio.create_task(snapshot_loop(app.custom_registry, snapshots, index))
    try:
        await app.run()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(OSError):
            write_snapshot(app.custom_registry, snapshots, index)
