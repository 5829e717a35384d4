"""RateLimitMiddleware on the real Redis store, over a real socket where the peer matters.

The app is Starlette behind the contrib OpenTelemetry ASGI middleware; some
tests serve it with uvicorn on 127.0.0.1 so the peer address comes from a
real TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio
import uvicorn
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore
from otel_backpressure.ratelimit.middleware import RateLimitMiddleware
from otel_backpressure.testing import MetricsCapture
from redis_compat import aclose

pytestmark = pytest.mark.integration

PER_MINUTE = Policy("per-minute", rate=2, period=60.0)
REQUESTS = "backpressure.rate_limit.requests"
# Generous: on a loaded machine a short timeout would fail open and hide the decision.
TIMEOUT = 5.0


def count(metrics: MetricsCapture, result: str, policy: str = "per-minute") -> float | None:
    return metrics.value(
        REQUESTS,
        {"backpressure.rate_limit.policy": policy, "backpressure.rate_limit.result": result},
    )


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"bp-test-mw-{uuid.uuid4().hex}:"
    yield name
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=name + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await aclose(client)


@pytest.fixture
async def stores() -> AsyncIterator[list[RedisStore]]:
    opened: list[RedisStore] = []
    yield opened
    for store in opened:
        await store.aclose()


@pytest.fixture
def make_app(
    metrics: MetricsCapture, tracer_provider: TracerProvider, stores: list[RedisStore]
) -> Callable[..., Any]:
    def make(store: RedisStore, **options: Any) -> Any:
        stores.append(store)

        async def hello(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        limiter = RateLimiter([PER_MINUTE], store=store, meter_provider=metrics.meter_provider)
        inner = Starlette(routes=[Route("/", hello)])
        return OpenTelemetryMiddleware(
            RateLimitMiddleware(inner, limiter=limiter, **options),
            tracer_provider=tracer_provider,
        )

    return make


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # proxy_headers=False: uvicorn would otherwise rewrite the client from
    # X-Forwarded-For itself (it trusts 127.0.0.1 by default) before the middleware runs.
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", access_log=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # surface a start-up failure
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_redis_backed_429_retry_after_and_headers(
    make_app: Callable[..., Any], redis_url: str, prefix: str, metrics: MetricsCapture
) -> None:
    app = make_app(RedisStore(redis_url, prefix=prefix, timeout=TIMEOUT))
    transport = httpx.ASGITransport(app=app, client=("198.51.100.4", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        responses = [await client.get("/") for _ in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 429]
    assert responses[0].headers["ratelimit-policy"] == '"per-minute";q=2;w=60'
    assert responses[0].headers["ratelimit"].startswith('"per-minute";r=1;t=')
    # one request's worth (30 s) minus the time the three requests took, rounded up
    assert 29 <= int(responses[2].headers["retry-after"]) <= 30
    assert responses[2].headers["ratelimit"].startswith('"per-minute";r=0;t=')
    assert count(metrics, "allowed") == 2
    assert count(metrics, "rejected") == 1


async def test_two_app_instances_share_one_bound_through_redis(
    make_app: Callable[..., Any], redis_url: str, prefix: str
) -> None:
    apps = [make_app(RedisStore(redis_url, prefix=prefix, timeout=TIMEOUT)) for _ in range(2)]
    statuses = []
    for index in range(4):
        transport = httpx.ASGITransport(app=apps[index % 2], client=("198.51.100.5", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            statuses.append((await client.get("/")).status_code)
    assert statuses == [200, 200, 429, 429]


async def test_untrusted_peer_over_a_real_socket_cannot_spoof(
    make_app: Callable[..., Any], redis_url: str, prefix: str
) -> None:
    # 127.0.0.1 is the real peer and is not trusted: X-Forwarded-For is ignored.
    app = make_app(
        RedisStore(redis_url, prefix=prefix, timeout=TIMEOUT), trusted_proxies=["10.0.0.0/8"]
    )
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        statuses = [
            (await client.get("/", headers={"x-forwarded-for": f"198.51.100.{i}"})).status_code
            for i in range(3)
        ]
    assert statuses == [200, 200, 429]


async def test_trusted_proxy_over_a_real_socket_limits_each_client(
    make_app: Callable[..., Any], redis_url: str, prefix: str, metrics: MetricsCapture
) -> None:
    app = make_app(
        RedisStore(redis_url, prefix=prefix, timeout=TIMEOUT), trusted_proxies=["127.0.0.1/32"]
    )
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:

        async def as_client(address: str) -> int:
            headers = {"x-forwarded-for": f"6.6.6.6, {address}"}
            return (await client.get("/", headers=headers)).status_code

        first = [await as_client("198.51.100.10") for _ in range(3)]
        second = [await as_client("198.51.100.11") for _ in range(2)]
    assert first == [200, 200, 429]
    assert second == [200, 200]
    assert count(metrics, "allowed") == 4
    assert count(metrics, "rejected") == 1


async def test_unreachable_redis_fails_open_and_is_metered(
    make_app: Callable[..., Any],
    metrics: MetricsCapture,
    span_exporter: Any,
) -> None:
    # Nothing listens on port 1: every decision fails; requests still succeed.
    app = make_app(RedisStore("redis://127.0.0.1:1/0", timeout=0.2))
    transport = httpx.ASGITransport(app=app, client=("198.51.100.6", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        statuses = [(await client.get("/")).status_code for _ in range(5)]
    assert statuses == [200] * 5
    errors = metrics.collect()["backpressure.rate_limit.store.errors"]
    total = sum(point.value for point in errors.data.data_points)
    assert total == 5
    for span in span_exporter.get_finished_spans():
        assert span.status.status_code is StatusCode.UNSET


async def test_unreachable_redis_fails_closed_when_chosen(
    make_app: Callable[..., Any], metrics: MetricsCapture
) -> None:
    app = make_app(RedisStore("redis://127.0.0.1:1/0", timeout=0.2, fail_open=False))
    transport = httpx.ASGITransport(app=app, client=("198.51.100.6", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/")
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert count(metrics, "rejected") == 1
