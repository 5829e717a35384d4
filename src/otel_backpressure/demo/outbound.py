"""The game's outbound dependencies: a profile service over real HTTP, and Redis if given.

- :class:`ProfileService` is a small ASGI app on loopback, served by uvicorn in
  its own thread (``otel_backpressure.testing.LoopbackServer``), whose every
  answer takes ``delay`` seconds (set by the scenario's phase: 0.6 s while the
  profile service is slow).
- :class:`Profiles` is the game's client for it: an ``httpx.AsyncClient`` with
  a pool of ``max_connections`` (4) and a short pool timeout, so concurrent
  profile lookups queue for connections and, in storms, give up
  (``httpx.PoolTimeout``, mapped to 503 ``pool_exhausted``). With a Redis URL
  each profile is cached in Redis for a few seconds through a
  ``BlockingConnectionPool`` just as small, so the Redis pool fills too.
- The live view's "HTTP pools" and "pools" sections show both.

Both pools are created after the instrumentor is on, so it instruments them
when they are made, as it would in an application.

Example::

    with ProfileService(delay=0.05) as service:
        profiles = Profiles(service.url, redis_url=None)
        await profiles.lookup(7)       # {"player": 7, "level": ...}
        await profiles.aclose()
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from otel_backpressure._shared import Receive, Scope, Send
from otel_backpressure.testing import LoopbackServer

__all__ = ["PROFILE_SHARE", "ProfileService", "Profiles"]

#: Share of player lookups that also fetch the player's profile.
PROFILE_SHARE = 0.5

_HEADERS = [(b"content-type", b"application/json")]


class ProfileService:
    """An upstream on ``127.0.0.1`` (a free port) that answers ``/profiles/{id}`` slowly."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self._server = LoopbackServer(self._app)
        self.url = ""

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        player = scope["path"].rsplit("/", 1)[-1]
        await asyncio.sleep(self.delay)
        body = json.dumps({"player": player, "level": len(player) * 7 % 50}).encode()
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def __enter__(self) -> ProfileService:
        self.url = self._server.__enter__().url
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


class Profiles:
    """The game's client for the profile service, with an optional Redis cache."""

    def __init__(
        self,
        url: str,
        *,
        redis_url: str | None,
        max_connections: int = 2,
        pool_timeout: float = 0.5,
        cache_seconds: int = 1,
    ) -> None:
        import httpx

        self._http = httpx.AsyncClient(
            base_url=url,
            limits=httpx.Limits(max_connections=max_connections),
            timeout=httpx.Timeout(10.0, pool=pool_timeout),
        )
        self._cache_seconds = cache_seconds
        self._redis: Any = None
        if redis_url:
            import redis.asyncio

            pool = redis.asyncio.BlockingConnectionPool.from_url(
                redis_url, max_connections=max_connections, timeout=pool_timeout
            )
            self._redis = redis.asyncio.Redis(connection_pool=pool)

    async def ping(self) -> None:
        """Reach the cache once (nothing without one); raises what redis-py raises."""
        if self._redis is not None:
            await self._redis.ping()

    async def lookup(self, player: int) -> dict[str, Any]:
        """The player's profile: from the cache if there, else from the service (cached)."""
        key = f"otel-backpressure-demo:profile:{player}"
        if self._redis is not None:
            cached = await self._redis.get(key)
            if cached is not None:
                return dict(json.loads(cached))
        response = await self._http.get(f"/profiles/{player}")
        response.raise_for_status()
        profile: dict[str, Any] = response.json()
        if self._redis is not None:
            await self._redis.set(key, json.dumps(profile), ex=self._cache_seconds)
        return profile

    async def endpoint(self, request: Any) -> Any:
        """``GET /players/{id}/profile``: the profile, through the pools above.

        ``httpx.PoolTimeout`` (no connection came free in time) reaches the
        error middleware, which answers 503 ``pool_exhausted``.
        """
        from starlette.responses import JSONResponse

        return JSONResponse(await self.lookup(int(request.path_params["player_id"])))

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._redis is not None:
            await self._redis.aclose()
