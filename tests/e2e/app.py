"""An application as users write it, run by the e2e tests under ``opentelemetry-instrument``.

Nothing here configures OpenTelemetry: the distro does, from ``OTEL_*``
variables, and the package's instrumentor is auto-loaded. The app uses every
part the way an app would: SQLAlchemy async and a raw asyncpg pool on
PostgreSQL, a FastAPI app with the package's rate-limit and error-mapping
middleware, the rate limiter on Redis (and on a Redis that is down), a
``limits`` strategy, mapped errors raised inside its own spans, and an httpx
client calling a small upstream over real HTTP with too few connections.

It plays rounds of requests in process until SIGTERM and prints one JSON line
per round: requests so far, anything unexpected that reached the app, spans
ended, and (with ``E2E_TRACEMALLOC=1``) Python memory in use.

Configuration (besides ``OTEL_*``): ``E2E_POSTGRES_URL`` (asyncpg DSN),
``E2E_REDIS_URL``, ``E2E_DEAD_REDIS_URL``, ``E2E_PREFIX`` (unique per run),
``E2E_EXTRA_SPANS`` (plain spans per round, for memory tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import tracemalloc
from typing import Any

MEASURE_MEMORY = os.environ.get("E2E_TRACEMALLOC") == "1"
if MEASURE_MEMORY:
    tracemalloc.start()

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from limits import parse  # noqa: E402
from limits.storage import MemoryStorage  # noqa: E402
from limits.strategies import MovingWindowRateLimiter  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.exc import TimeoutError as PoolTimeoutError  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from otel_backpressure.errors import (  # noqa: E402
    ConflictError,
    ErrorMappingMiddleware,
    NotFoundError,
    ValidationError,
)
from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore  # noqa: E402
from otel_backpressure.ratelimit.middleware import RateLimitMiddleware  # noqa: E402
from otel_backpressure.testing import LoopbackServer  # noqa: E402

POSTGRES_URL = os.environ["E2E_POSTGRES_URL"]
REDIS_URL = os.environ["E2E_REDIS_URL"]
DEAD_REDIS_URL = os.environ["E2E_DEAD_REDIS_URL"]
PREFIX = os.environ["E2E_PREFIX"]
EXTRA_SPANS = int(os.environ.get("E2E_EXTRA_SPANS", "0"))

tracer = trace.get_tracer("e2e.app")


class SpanCounter(SpanProcessor):
    """Counts ended spans: how many the exporter pipeline was offered."""

    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


def tick_span(index: int) -> None:
    with tracer.start_as_current_span("e2e.tick") as span:
        span.set_attribute("e2e.index", index)
        span.set_attribute("e2e.note", "a plain span with two attributes")


def bytes_per_span() -> float:
    """Python memory one ended span like ``tick_span``'s holds, if something keeps it."""
    provider = SdkTracerProvider()
    kept: list[Any] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            kept.append(span)

    provider.add_span_processor(Keep())
    probe = provider.get_tracer("probe")
    before = tracemalloc.get_traced_memory()[0]
    for index in range(500):
        with probe.start_as_current_span("e2e.tick") as span:
            span.set_attribute("e2e.index", index)
            span.set_attribute("e2e.note", "a plain span with two attributes")
    cost = (tracemalloc.get_traced_memory()[0] - before) / 500
    provider.shutdown()
    kept.clear()
    return cost


def build_app(engine: Any, raw_pool: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/players/{player_id}")
    async def player(player_id: int) -> dict[str, int]:
        async with engine.connect() as connection:
            found = await connection.execute(text("SELECT 1 WHERE :id < 1000"), {"id": player_id})
            if found.first() is None:
                raise NotFoundError(f"no player {player_id}")
        return {"id": player_id}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT pg_sleep(0.15)"))
        return {"ok": "slow"}

    @app.get("/raw")
    async def raw() -> dict[str, int]:
        async with raw_pool.acquire() as connection:
            value = await connection.fetchval("SELECT 1")
        return {"value": int(value)}

    @app.get("/sync")
    def sync_endpoint() -> dict[str, str]:  # FastAPI runs it on anyio's thread limiter
        return {"ok": "sync"}

    @app.post("/validate")
    async def validate() -> None:
        raise ValidationError("score out of range")

    @app.post("/conflict")
    async def conflict() -> None:
        raise ConflictError("name taken")

    memory_limiter = RateLimiter([Policy("e2e-memory", rate=20, period=1.0, burst=3)])

    def client_key(scope: Any) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"x-client":
                return str(value.decode())
        return None

    app.add_middleware(ErrorMappingMiddleware)
    app.add_middleware(RateLimitMiddleware, limiter=memory_limiter, key_func=client_key)
    return app


# The pool is kept tiny on purpose: any database route may time out (503).
EXPECTED = {
    "/players/1": {200, 429, 503},
    "/players/5000": {404, 429, 503},
    "/slow": {200, 429, 503},
    "/raw": {200, 429},
    "/validate": {422, 429},
    "/conflict": {409, 429},
    "/sync": {200, 429},
}


async def upstream_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A service the app calls over real HTTP: what its outbound pool connects to.
    Each answer takes 20 ms."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.02)
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    counter = SpanCounter()
    provider = trace.get_tracer_provider()
    provider.add_span_processor(counter)  # type: ignore[attr-defined]
    span_cost = bytes_per_span() if MEASURE_MEMORY else 0.0

    engine = create_async_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://", 1),
        pool_size=1,
        max_overflow=1,
        pool_timeout=0.1,
    )
    raw_pool = await asyncpg.create_pool(POSTGRES_URL, min_size=1, max_size=2)
    redis_limiter = RateLimiter(
        [Policy("e2e-redis", rate=5, period=1.0, burst=3)],
        store=RedisStore(REDIS_URL, prefix=f"{PREFIX}:"),
    )
    dead_redis_limiter = RateLimiter(
        [Policy("e2e-redis-down", rate=5, period=1.0)],
        store=RedisStore(DEAD_REDIS_URL, prefix=f"{PREFIX}:", probe_interval=0.2),
    )
    signups = MovingWindowRateLimiter(MemoryStorage())
    signup_limit = parse("4/second")

    servers = contextlib.ExitStack()
    upstream = servers.enter_context(LoopbackServer(upstream_answer))
    # one connection for three concurrent calls: two queue for it every round
    outbound = httpx.AsyncClient(base_url=upstream.url, limits=httpx.Limits(max_connections=1))

    async def outbound_calls() -> None:
        responses = await asyncio.gather(*(outbound.get("/") for _ in range(3)))
        async with httpx.AsyncClient(base_url=upstream.url) as once:  # a connection that ends
            responses.append(await once.get("/"))
        for response in responses:
            if response.status_code != 200:
                unexpected.append(f"outbound: HTTP {response.status_code}")

    app = build_app(engine, raw_pool)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    unexpected: list[str] = []
    requests = 0
    round_number = 0
    started = time.monotonic()

    async def call(method: str, path: str, client: str) -> None:
        nonlocal requests
        try:
            response = await http.request(method, path, headers={"x-client": client})
        except Exception as exc:
            unexpected.append(f"{path}: {type(exc).__name__}: {exc}")
            return
        requests += 1
        if response.status_code not in EXPECTED[path]:
            unexpected.append(f"{path}: HTTP {response.status_code} {response.text[:200]}")

    async def spans_with_mapped_errors() -> None:
        try:
            with tracer.start_as_current_span("e2e.lookup"):
                raise NotFoundError("no such match")
        except NotFoundError:
            pass
        # hold both connections so the next checkout times out inside a span
        async with engine.connect() as first, engine.connect() as second:
            await first.execute(text("SELECT 1"))
            await second.execute(text("SELECT 1"))
            try:
                with tracer.start_as_current_span("e2e.checkout"):
                    async with engine.connect() as third:
                        await third.execute(text("SELECT 1"))
            except PoolTimeoutError:
                pass

    async with httpx.AsyncClient(transport=transport, base_url="http://e2e") as http:
        print(json.dumps({"ready": True, "bytes_per_span": span_cost}), flush=True)
        while not stop.is_set():
            round_number += 1
            calls = [
                call("GET", "/players/1", f"client-{round_number % 40}"),
                call("GET", "/players/5000", f"visitor-{round_number}"),
                call("GET", "/slow", "worker-a"),
                call("GET", "/slow", "worker-b"),
                call("GET", "/slow", "worker-c"),
                call("GET", "/raw", "worker-d"),
                call("GET", "/sync", "worker-e"),
                asyncio.to_thread(time.sleep, 0),  # the loop's default executor
                call("POST", "/validate", "client-1"),
                call("POST", "/conflict", "client-2"),
                *(call("GET", "/players/1", "greedy") for _ in range(6)),
            ]
            try:
                await asyncio.gather(*calls)
                await outbound_calls()
                await spans_with_mapped_errors()
                # more hits per round than either burst: rejections however slow a round is
                for _ in range(5):
                    await redis_limiter.hit("greedy")
                for _ in range(3):
                    await dead_redis_limiter.hit("anyone")
                for _ in range(6):
                    signups.hit(signup_limit, "signup")
                for index in range(EXTRA_SPANS):
                    tick_span(index)
            except Exception as exc:  # nothing may reach the app
                unexpected.append(f"round: {type(exc).__name__}: {exc}")
            status = {
                "round": round_number,
                "elapsed": round(time.monotonic() - started, 2),
                "requests": requests,
                "unexpected": unexpected[-5:],
                "unexpected_count": len(unexpected),
                "spans_ended": counter.ended,
            }
            if MEASURE_MEMORY:
                status["traced_bytes"] = tracemalloc.get_traced_memory()[0]
            print(json.dumps(status), flush=True)
            await asyncio.sleep(0.05)

    await outbound.aclose()
    servers.close()
    await raw_pool.close()
    await engine.dispose()
    print(json.dumps({"stopped": True, "rounds": round_number}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
