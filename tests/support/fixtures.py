"""Shared pytest fixtures around a real redis-server.

Import them in ``tests/conftest.py``::

    from tests.support.fixtures import redis_server, redis_url  # noqa: F401

``redis_server`` is one server for the whole session; ``redis_url`` flushes it before each test,
so tests never see each other's keys. Tests that stop Redis (outage tests) must start their own
`RedisServer` instead of stopping the shared one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the session (do not stop it; see the module docstring)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared server, emptied for this test."""
    if not redis_server.running:  # a test stopped it anyway: bring it back for the next ones
        redis_server.start()
    redis_server.flushall()
    return redis_server.url
