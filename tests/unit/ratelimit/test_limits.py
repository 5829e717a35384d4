"""BackpressureInstrumentor meters the ``limits`` library: direct strategies and slowapi.

Real ``limits`` memory storages (Redis ones: tests/integration), a real
slowapi-wrapped Starlette app, exact counts. ``limits`` keeps its own wall
clock, so every limit here is per day: no window can roll over mid-test
(except at midnight UTC).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from limits import RateLimitItemPerDay, RateLimitItemPerMinute, parse, storage, strategies
from limits.aio import storage as aio_storage
from opentelemetry.instrumentation.utils import suppress_instrumentation
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.middleware import SlowAPIMiddleware
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from limits_fixtures import ASYNC_STRATEGIES, REQUESTS, SYNC_STRATEGIES, count
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.ratelimit.limits import LimitsIntegration, policy_name
from otel_backpressure.settings import Settings
from otel_backpressure.testing import MetricsCapture


def test_policy_name_is_the_limit_without_identifiers() -> None:
    assert policy_name(parse("10/second")) == "10/1second"
    assert policy_name(parse("5 per 2 minutes")) == "5/2minute"
    item = RateLimitItemPerMinute(3, namespace="user-42")
    assert policy_name(item) == "3/1minute"


def test_patch_table_covers_sync_and_async_strategies() -> None:
    targets = {(patch.module, patch.attribute) for patch in LimitsIntegration().patches}
    for module in ("limits.strategies", "limits.aio.strategies"):
        for strategy in ("FixedWindow", "MovingWindow", "SlidingWindowCounter"):
            assert (module, f"{strategy}RateLimiter.hit") in targets
    assert LimitsIntegration().name == "rate_limit"


@pytest.mark.parametrize("strategy", SYNC_STRATEGIES)
def test_sync_strategies_on_memory_storage_are_counted_exactly(
    instrument: Callable[[], None], metrics: MetricsCapture, strategy: type[Any]
) -> None:
    limiter = strategy(storage.MemoryStorage())
    item = RateLimitItemPerDay(3)
    results = [limiter.hit(item, "client-a") for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert limiter.hit(item, "client-b", cost=2)
    assert count(metrics, "3/1day", "allowed") == 4
    assert count(metrics, "3/1day", "rejected") == 2


@pytest.mark.parametrize("strategy", ASYNC_STRATEGIES)
async def test_async_strategies_are_counted_exactly(
    instrument: Callable[[], None], metrics: MetricsCapture, strategy: type[Any]
) -> None:
    store = aio_storage.MemoryStorage()  # limits before 3.4 holds it by weak reference only
    limiter = strategy(store)
    item = RateLimitItemPerDay(2)
    results = [await limiter.hit(item, "client-a") for _ in range(3)]
    assert results == [True, True, False]
    assert count(metrics, "2/1day", "allowed") == 2
    assert count(metrics, "2/1day", "rejected") == 1


def test_identifiers_never_reach_metric_attributes(
    instrument: Callable[[], None], metrics: MetricsCapture
) -> None:
    limiter = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
    limiter.hit(parse("1/day"), "198.51.100.23", "user-secret")
    limiter.hit(parse("1/day"), "198.51.100.23", "user-secret")
    points = metrics.collect()[REQUESTS].data.data_points
    attributes = sorted(
        (dict(point.attributes or {}) for point in points),
        key=lambda attrs: str(attrs["backpressure.rate_limit.result"]),
    )
    assert attributes == [
        {"backpressure.rate_limit.policy": "1/1day", "backpressure.rate_limit.result": result}
        for result in ("allowed", "rejected")
    ]
    assert "198.51.100.23" not in repr(attributes)
    assert "user-secret" not in repr(attributes)


def test_suppressed_instrumentation_is_not_counted(
    instrument: Callable[[], None], metrics: MetricsCapture
) -> None:
    limiter = strategies.FixedWindowRateLimiter(storage.MemoryStorage())
    with suppress_instrumentation():
        assert limiter.hit(parse("1/day"), "a")
    assert limiter.hit(parse("1/day"), "b")
    assert count(metrics, "1/1day", "allowed") == 1


def test_storage_errors_propagate_unchanged_and_are_not_counted(
    instrument: Callable[[], None], metrics: MetricsCapture
) -> None:
    # Nothing listens on port 1: the library's own error reaches the caller as before.
    store = storage.storage_from_string("redis://127.0.0.1:1", socket_connect_timeout=0.2)
    limiter = strategies.FixedWindowRateLimiter(store)
    with pytest.raises(Exception) as caught:
        limiter.hit(parse("1/day"), "client")
    assert "otel_backpressure" not in type(caught.value).__module__
    assert metrics.collect().get(REQUESTS) is None


def test_uninstrument_stops_counting_and_reinstrument_resumes(
    instrument: Callable[[], None], metrics: MetricsCapture
) -> None:
    limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
    item = RateLimitItemPerMinute(100)
    limiter.hit(item, "client")
    BackpressureInstrumentor().uninstrument()
    assert not hasattr(strategies.MovingWindowRateLimiter.hit, "__wrapped__")
    limiter.hit(item, "client")
    assert count(metrics, "100/1minute", "allowed") == 1

    instrument()  # instrument -> uninstrument -> instrument
    limiter.hit(item, "client")
    limiter.hit(item, "client")
    assert count(metrics, "100/1minute", "allowed") == 3
    assert limiter.hit(item, "client")  # still the library's own answer


def test_rate_limit_part_disabled_by_settings_patches_nothing(metrics: MetricsCapture) -> None:
    instrumentor = BackpressureInstrumentor()
    instrumentor.instrument(
        meter_provider=metrics.meter_provider,
        settings=Settings(pool_enabled=False, errors_enabled=False, rate_limit_enabled=False),
    )
    try:
        strategies.FixedWindowRateLimiter(storage.MemoryStorage()).hit(parse("1/day"), "a")
        assert not hasattr(strategies.FixedWindowRateLimiter.hit, "__wrapped__")
    finally:
        instrumentor.uninstrument()
    assert metrics.collect().get(REQUESTS) is None


@pytest.fixture
async def slowapi_client() -> AsyncIterator[httpx.AsyncClient]:
    limiter = Limiter(key_func=get_remote_address, default_limits=["2/day"])

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", hello)])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIMiddleware)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_slowapi_app_is_metered_without_code_changes(
    instrument: Callable[[], None], metrics: MetricsCapture, slowapi_client: httpx.AsyncClient
) -> None:
    statuses = [(await slowapi_client.get("/")).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    assert count(metrics, "2/1day", "allowed") == 2
    assert count(metrics, "2/1day", "rejected") == 2


async def test_slowapi_decorated_fastapi_route_is_metered(
    instrument: Callable[[], None], metrics: MetricsCapture
) -> None:
    from fastapi import FastAPI

    limiter = Limiter(key_func=get_remote_address)
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.get("/scores")
    @limiter.limit("3/day")
    async def scores(request: Request) -> dict[str, int]:
        return {"top": 1}

    transport = httpx.ASGITransport(app=app, client=("198.51.100.12", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        statuses = [(await client.get("/scores")).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert count(metrics, "3/1day", "allowed") == 3
    assert count(metrics, "3/1day", "rejected") == 2
