"""Fixtures of the rate-limit integration tests: the ``limits`` metering one,
shared with the unit tests, and a private Redis server of a test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from benchmarks._redis_server import Server as PrivateRedis

from limits_fixtures import instrument

__all__ = ["instrument", "private_redis"]


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A ``redis-server`` on a free port, for tests that stop, stall or flush it."""
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()
