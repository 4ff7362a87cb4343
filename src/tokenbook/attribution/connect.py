"""A Redis client with timeouts suited to the registry: fail fast, never hang.

redis-py's defaults retry a refused connection ten times with backoff and have no socket
timeout, so a down or black-holed Redis would stall an admin command for seconds and a gate
lookup until Envoy's own timeout. Both the CLI and (we suggest) the service build their client
here.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_client(url: str, *, timeout_s: float = 2.0, retries: int = 1) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); ValueError if the URL
    is not one. ``retries`` immediate retries absorb a single dropped connection."""
    client: Redis = Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries),
    )
    return client
