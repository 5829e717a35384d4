"""The demo's game service: a Starlette app over SQLAlchemy async, rate limited, errors mapped.

Routes, and the backpressure each one produces:

- ``GET /players/{id}``: a lookup; unknown ids raise ``NotFoundError`` (404).
- ``POST /players/{id}/score``: an update; out-of-range scores raise ``ValidationError``.
- ``POST /players``: a sign-up; a taken name raises ``ConflictError`` (409); the
  ``limits`` library caps sign-ups (``RateLimitExceededError``, 429).
- ``GET /leaderboard``: a slow report that holds its connection, so concurrent
  calls push the pool into overflow and then into checkout timeouts (503).
- ``POST /matches``: a rare unmapped bug (``RuntimeError``) to show ``unhandled``.
- ``GET /export``: a report built by sync code, so Starlette runs it on a thread of
  anyio's default limiter (``THREAD_TOKENS`` tokens in the demo): concurrent exports
  fill the limiter and queue (``backpressure.thread_pool.*``, ``anyio``).
- ``GET /stats``: a stats route with a blocking call on the event loop (the classic
  mistake: a sync call inside ``async def``), so every request waits behind it
  (``backpressure.event_loop.delay``).

Every request of a player (one carrying the ``x-player-id`` header) is rate
limited per player (``player`` policy) and the leaderboard also per
``leaderboard`` policy; a request without it is not limited (the demo's
warm-up sends those).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import sqlalchemy as sa
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from otel_backpressure.errors import ConflictError, NotFoundError, RateLimitExceededError
from otel_backpressure.errors import ValidationError as GameValidationError
from otel_backpressure.ratelimit import Policy, RateLimiter
from otel_backpressure.ratelimit.middleware import RateLimitMiddleware
from otel_backpressure.version import __version__

__all__ = [
    "EXECUTOR_WORKERS",
    "THREAD_TOKENS",
    "GameService",
    "build_app",
    "player_policy",
    "proposed_policy",
]

PLAYER_ID_HEADER = "x-player-id"
MAX_SCORE = 1000
#: anyio's default thread limiter in the demo (40 by default): a handful of
#: concurrent exports fill it, as 40 would on a busier service.
THREAD_TOKENS = 6
EXPORT_SECONDS = 0.4  # a report export holds its thread this long
STALL_SECONDS = 0.15  # the stats route blocks the loop this long
#: asyncio's default executor, where the leaderboard renders: large enough that
#: the rush fills the connection pool, not the threads (that is the threads
#: phase's story, on anyio's limiter)
EXECUTOR_WORKERS = 32

_tracer = trace.get_tracer("otel_backpressure.demo", __version__)


class GameService:
    """The tables and queries; one instance per demo run (unique table names)."""

    __slots__ = ("bug_rate", "engine", "leaderboard_hold", "players", "signup_limit", "signups")

    def __init__(
        self,
        engine: AsyncEngine,
        suffix: str,
        leaderboard_hold: float = 0.3,
        bug_rate: float = 0.2,
    ) -> None:
        self.engine = engine
        # the demo's scenario moves these two as its phases change
        self.leaderboard_hold = leaderboard_hold
        self.bug_rate = bug_rate
        metadata = sa.MetaData()
        self.players = sa.Table(
            f"demo_players_{suffix}",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(64), nullable=False, unique=True),
            sa.Column("score", sa.Integer, nullable=False, default=0),
        )
        self.signup_limit, self.signups = _signup_limiter()

    async def create_schema(self, players: int) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(self.players.metadata.create_all)
            await connection.execute(
                self.players.insert(),
                [{"name": f"player-{i}", "score": 0} for i in range(1, players + 1)],
            )

    async def drop_schema(self) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(self.players.metadata.drop_all)

    async def player(self, request: Request) -> JSONResponse:
        player_id = int(request.path_params["player_id"])
        with _tracer.start_as_current_span("game.player.lookup"):
            async with self.engine.connect() as connection:
                row = (
                    await connection.execute(
                        sa.select(self.players.c.name, self.players.c.score).where(
                            self.players.c.id == player_id
                        )
                    )
                ).first()
            if row is None:
                raise NotFoundError(f"no player {player_id}")
        return JSONResponse({"id": player_id, "name": row.name, "score": row.score})

    async def score(self, request: Request) -> JSONResponse:
        player_id = int(request.path_params["player_id"])
        body = await request.json()
        with _tracer.start_as_current_span("game.player.score"):
            points = body.get("points")
            if not isinstance(points, int) or not 0 <= points <= MAX_SCORE:
                raise GameValidationError(f"points must be 0..{MAX_SCORE}")
            async with self.engine.begin() as connection:
                await connection.execute(
                    self.players.update()
                    .where(self.players.c.id == player_id)
                    .values(score=self.players.c.score + points)
                )
        return JSONResponse({"id": player_id, "added": points})

    async def signup(self, request: Request) -> JSONResponse:
        body = await request.json()
        name = str(body.get("name", ""))[:64]
        with _tracer.start_as_current_span("game.player.signup"):
            if not self.signups.hit(self.signup_limit, "signup"):
                raise RateLimitExceededError(policy="signup", retry_after=1.0)
            async with self.engine.begin() as connection:
                taken = (
                    await connection.execute(
                        sa.select(self.players.c.id).where(self.players.c.name == name)
                    )
                ).first()
                if taken is not None:
                    raise ConflictError("name taken")
                await connection.execute(self.players.insert().values(name=name, score=0))
        return JSONResponse({"name": name}, status_code=201)

    async def leaderboard(self, request: Request) -> JSONResponse:
        with _tracer.start_as_current_span("game.leaderboard"):
            async with self.engine.connect() as connection:
                rows = (
                    await connection.execute(
                        sa.select(self.players.c.name, self.players.c.score)
                        .order_by(self.players.c.score.desc())
                        .limit(10)
                    )
                ).all()
                # the report is rendered in a worker thread (CPU work kept off the
                # event loop) while the connection stays checked out: in a rush
                # both the pool and the default thread pool fill up
                await asyncio.to_thread(
                    time.sleep, self.leaderboard_hold * random.uniform(0.5, 1.5)
                )
        return JSONResponse([{"name": r.name, "score": r.score} for r in rows])

    def export(self, request: Request) -> JSONResponse:
        # sync: Starlette runs it on a thread of anyio's default limiter
        time.sleep(EXPORT_SECONDS * random.uniform(0.5, 1.5))
        return JSONResponse({"export": "done"})

    async def stats(self, request: Request) -> JSONResponse:
        with _tracer.start_as_current_span("game.stats"):
            time.sleep(STALL_SECONDS)  # noqa: ASYNC251 - the blocking call the demo shows
        return JSONResponse({"players": "counted"})

    async def match(self, request: Request) -> JSONResponse:
        with _tracer.start_as_current_span("game.match"):
            if random.random() < self.bug_rate:
                raise RuntimeError("matchmaker bug")
        return JSONResponse({"match": "queued"}, status_code=202)


def _signup_limiter() -> tuple[Any, Any]:
    """The ``limits`` library guards sign-ups, to show its metering next to ours."""
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    return parse("5/second"), MovingWindowRateLimiter(MemoryStorage())


def player_key(scope: Any) -> str | None:
    """Rate-limit per player (the demo's players share one address); no player id: exempt."""
    for name, value in scope.get("headers", ()):
        if name == PLAYER_ID_HEADER.encode():
            return "player:" + bytes(value).decode("latin-1")
    return None


def build_app(
    service: GameService,
    limiter: RateLimiter,
    proposed: RateLimiter | None = None,
    profiles: Any = None,
) -> Any:
    """The ASGI app: Starlette, error mapping inside it, rate limiting in front.

    ``proposed``, when given, decides every request first in dry run: a
    stricter limit being tried out, metered as ``dry_run_rejected``, never
    enforced.
    """
    from otel_backpressure.errors import ErrorMappingMiddleware

    dry_run = (
        [Middleware(RateLimitMiddleware, limiter=proposed, key_func=player_key, dry_run=True)]
        if proposed is not None
        else []
    )

    routes = [
        Route("/players/{player_id:int}", service.player, methods=["GET"]),
        Route("/players/{player_id:int}/score", service.score, methods=["POST"]),
        Route("/players", service.signup, methods=["POST"]),
        Route("/leaderboard", service.leaderboard, methods=["GET"]),
        Route("/matches", service.match, methods=["POST"]),
        Route("/export", service.export, methods=["GET"]),
        Route("/stats", service.stats, methods=["GET"]),
    ]
    if profiles is not None:  # outbound.Profiles: an HTTP pool and maybe a Redis pool
        routes.append(Route("/players/{player_id:int}/profile", profiles.endpoint))
    app: Any = Starlette(
        routes=routes,
        middleware=[
            *dry_run,
            Middleware(
                RateLimitMiddleware,
                limiter=limiter,
                key_func=player_key,
                route_policies={
                    "/leaderboard": [Policy("leaderboard", rate=1, period=1.0, burst=2)]
                },
            ),
            Middleware(ErrorMappingMiddleware),
        ],
    )
    try:  # server spans, when the contrib ASGI instrumentation is installed
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError:
        return app
    return OpenTelemetryMiddleware(app)


def player_policy() -> Policy:
    return Policy("player", rate=3, period=1.0, burst=4)


def proposed_policy() -> Policy:
    """A stricter per-player limit tried in dry run before anyone enforces it."""
    return Policy("player-proposed", rate=5, period=2.0, burst=3)
