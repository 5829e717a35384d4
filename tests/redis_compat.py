"""What the Redis tests need to run on every supported redis-py (4.6 and later)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis


async def aclose(client: Any) -> None:
    """Close a ``redis.asyncio`` client: ``aclose()`` from redis-py 5.0.1, ``close()`` before."""
    close = getattr(client, "aclose", None) or client.close
    await close()


@contextmanager
def sync_client(*args: Any, **kwargs: Any) -> Iterator[redis.Redis]:
    """A sync ``redis.Redis`` whose connections are closed when the block ends.

    ``with redis.Redis(...)`` closes the client's pool from redis-py 5 on;
    before, it only gives the connection back, and the server keeps counting it.
    """
    client = redis.Redis(*args, **kwargs)
    try:
        yield client
    finally:
        client.connection_pool.disconnect()
