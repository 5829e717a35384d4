"""What the Redis tests need to run on every supported redis-py (4.6 and later)."""

from __future__ import annotations

from typing import Any


async def aclose(client: Any) -> None:
    """Close a ``redis.asyncio`` client: ``aclose()`` from redis-py 5.0.1, ``close()`` before."""
    close = getattr(client, "aclose", None) or client.close
    await close()
