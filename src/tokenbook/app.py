"""Composition root and lifecycle of `tokenbook serve`.

Start-up, in order: read credentials and price overrides (a bad file is a start-up error, not a
500 later), connect Redis lazily (tokenbook starts while Redis is down: cached keys and the
``registry_down`` policy cover that), start the gRPC server and ``/metrics``, mark health
SERVING.

Drain on SIGTERM / SIGINT, like a runbook:
1. health -> NOT_SERVING, so load balancers and Envoy's health checks move away;
2. stop accepting new streams; open streams get up to ``drain_timeout_s`` to finish;
3. streams still open then are cancelled (the meter books them as aborted);
4. the ledger writes what is still queued (to Redis, or to its spool when Redis is down);
5. background tasks stop, Redis closes, ``/metrics`` stops last.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry, start_http_server

from tokenbook.attribution.cache import KeyResolver
from tokenbook.attribution.connect import redis_client
from tokenbook.attribution.registry import KeyRegistry
from tokenbook.booking import Booker
from tokenbook.extproc.admin import KeyRegistryService
from tokenbook.extproc.server import make_server
from tokenbook.extproc.streams import Processors
from tokenbook.gate import Gate, GatePolicy
from tokenbook.ledger.service import Ledger
from tokenbook.meter import MeterSession
from tokenbook.metrics.instruments import (
    BudgetRemainingCollector,
    Metrics,
    RegistryCacheCollector,
)
from tokenbook.pricing.overrides import PriceOverrides, load_overrides
from tokenbook.pricing.pricer import Pricer
from tokenbook.settings import Settings, read_credential

log = logging.getLogger("tokenbook")


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class Running:
    """Handles to a running service (used by tests and by `serve`)."""

    grpc_port: int
    metrics_port: int
    metrics: Metrics
    stop: Callable[[], None]


class App:
    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        credentials = (
            {ref: read_credential(ref, src, environ) for ref, src in settings.credentials.items()}
            if settings.credential_swap
            else {}
        )
        overrides = load_overrides(settings.prices_file) if settings.prices_file else None
        # Short timeouts: a gate lookup must fail fast into the registry_down policy rather
        # than hang until Envoy's message_timeout.
        self.redis = redis_client(settings.redis_url, timeout_s=1.0)
        self.registry = KeyRegistry(self.redis, prefix=settings.redis_prefix)
        self.resolver = KeyResolver(
            self.registry,
            self.redis,
            ttl_s=settings.key_cache_ttl_s,
            negative_ttl_s=settings.negative_cache_ttl_s,
        )
        self.metrics_registry = CollectorRegistry()
        self.metrics = Metrics(
            self.metrics_registry,
            attribution_labels=settings.labels,
            label_limits=settings.label_limits,
        )
        # Collectors read at scrape time cannot go through prometheus_client's multiprocess
        # files: under `serve --workers N` they get their own registry, which the worker
        # writes out for the supervisor's /metrics (tokenbook.workers).
        self.custom_registry = (
            CollectorRegistry()
            if environ.get("PROMETHEUS_MULTIPROC_DIR")
            else self.metrics_registry
        )
        self.custom_registry.register(
            RegistryCacheCollector(self.resolver.stats, lambda: self.resolver.healthy)
        )
        self.pricer = Pricer(overrides or PriceOverrides())
        # Spend, budgets, suspensions, the ledger stream and its spool (tokenbook/ledger/).
        self.ledger = Ledger(settings, self.redis, self.metrics)
        self.custom_registry.register(BudgetRemainingCollector(self.ledger.remaining))
        self.booker = Booker(self.metrics, self.pricer, sink=self.ledger.record)
        gate = Gate(
            self.resolver,
            GatePolicy(
                unknown_keys=settings.unknown_keys,
                registry_down=settings.registry_down,
                credential_swap=settings.credential_swap,
                credentials=credentials,
                provider_credentials=settings.provider_credentials,
                include_usage_providers=frozenset(
                    settings.include_usage_providers if settings.include_usage else ()
                ),
            ),
            admission=self.ledger.admission,
        )
        self.processors = processors = Processors(
            gate=gate,
            new_meter_session=partial(
                MeterSession,
                self.booker,
                max_json_bytes=settings.max_json_body_bytes,
                dialects=settings.providers,
            ),
            provider_for_route=settings.provider_for_route,
            booker=self.booker,
            metrics=self.metrics,
        )
        admin = (
            KeyRegistryService(self.registry, settings.admin_token or "")
            if settings.admin_enabled
            else None
        )
        self.grpc = make_server(settings.transport, settings.listen, processors, admin)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _flush_metrics(self) -> None:
        # Hot-path increments are batched (`metrics.instruments.Tally`); a scrape of this
        # process flushes them itself, the files behind `serve --workers` need this.
        while True:
            await asyncio.sleep(0.5)
            self.metrics.tally.flush()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[Running], None] | None = None) -> None:
        host, port = split_host_port(self.settings.metrics_listen)
        metrics_server, metrics_thread = start_http_server(
            port, addr=host, registry=self.metrics_registry
        )
        try:
            await self.grpc.start()
            self._tasks.append(asyncio.create_task(self.resolver.run_invalidation()))
            self._tasks.append(asyncio.create_task(self.ledger.run()))
            self._tasks.append(asyncio.create_task(self._flush_metrics()))
            log.info(
                "tokenbook serving ext_proc on %s (admin API %s), metrics on %s:%d",
                self.settings.listen,
                "on" if self.grpc.admin_enabled else "off",
                host,
                metrics_server.server_port,
            )
            if on_ready is not None:
                on_ready(
                    Running(
                        grpc_port=self.grpc.port,
                        metrics_port=metrics_server.server_port,
                        metrics=self.metrics,
                        stop=self.request_stop,
                    )
                )
            await self._stop.wait()
            log.info("draining: up to %.0fs for open streams", self.settings.drain_timeout_s)
            await self.grpc.stop(self.settings.drain_timeout_s)
        finally:
            with suppress(Exception):
                await self.ledger.drain(timeout_s=5.0)
            for task in self._tasks:
                task.cancel()
            # A task cancelled while redis-py is still connecting can stay stuck in its cleanup;
            # shutting down must not wait on it forever.
            if self._tasks:
                _, stuck = await asyncio.wait(self._tasks, timeout=2.0)
                if stuck:
                    log.warning("%d background task(s) did not stop in time", len(stuck))

            self.metrics.tally.flush()
            with suppress(Exception):
                await self.redis.aclose()
            await self.ledger.aclose()
            metrics_server.shutdown()
            metrics_server.server_close()
            metrics_thread.join(timeout=5)
            log.info("tokenbook stopped")


def freeze_startup_objects() -> None:
    """Move everything built so far out of the garbage collector's view, for good.

    The start-up objects (the price catalogue, protobuf descriptors, compiled patterns: ~76,000
    tracked objects) live as long as the process, yet every full collection walked them: one
    took 47 ms, a pause in the middle of ext_proc streams. `gc.freeze` (CPython's advice for
    long-running servers) takes them out; only what requests allocate is collected.
    """
    gc.collect()
    gc.freeze()


async def serve(settings: Settings, environ: Mapping[str, str]) -> None:
    app = App(settings, environ)
    freeze_startup_objects()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    await app.run()
