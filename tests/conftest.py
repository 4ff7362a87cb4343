"""Shared pytest configuration: paths to the corpus and to the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fixtures import redis_server, redis_url  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return CORPUS
