"""ASGI overhead per request: RateLimitMiddleware against slowapi on the same Starlette app.

Each variant is the same one-route Starlette app, called directly with a
prepared scope, ``receive`` and ``send`` (no client, no socket), so the time
is the app plus the middleware. Limits are far above the request count, so
nothing is rejected. The variants run interleaved, in one process, for
several rounds; the medians give each middleware's added time over the bare
app, and the ratio (ours - bare) / (slowapi - bare) is what BENCHMARKS.md
reports (target <= 0.1), with one limit and with two (per second and per
minute), against slowapi's ``SlowAPIMiddleware`` (the one its documentation
shows) and its lighter ``SlowAPIASGIMiddleware``.

Run: ``python -m benchmarks ratelimit_asgi``
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from slowapi import Limiter
from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
from slowapi.util import get_remote_address
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from otel_backpressure.ratelimit import Policy, RateLimiter
from otel_backpressure.ratelimit.middleware import RateLimitMiddleware

App = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

REQUESTS = 2_000  # per variant per round
ROUNDS = 9
WARMUP = 300


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _bare() -> App:
    return Starlette(routes=[Route("/", _hello)])


def _ours(meter_provider: MeterProvider, limits: int) -> App:
    policies = [
        Policy("per-second", rate=10**9, period=1.0),
        Policy("per-minute", rate=10**9, period=60.0),
    ][:limits]
    limiter = RateLimiter(policies, meter_provider=meter_provider)
    return Starlette(
        routes=[Route("/", _hello)],
        middleware=[Middleware(RateLimitMiddleware, limiter=limiter)],
    )


def _slowapi(middleware: type[Any], limits: int) -> App:
    limiter = Limiter(
        key_func=get_remote_address,
        default_limits=["1000000000/second", "1000000000/minute"][:limits],
        headers_enabled=True,
    )
    app = Starlette(routes=[Route("/", _hello)], middleware=[Middleware(middleware)])
    app.state.limiter = limiter
    return app


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
        "client": ("203.0.113.7", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _time(app: App, requests: int) -> float:
    """Mean seconds per request over ``requests`` sequential calls."""
    statuses: list[int] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.perf_counter()
    for _ in range(requests):
        await app(_scope(), _receive, send)
    elapsed = time.perf_counter() - start
    if any(status != 200 for status in statuses):
        raise RuntimeError(f"a benchmark request was not answered 200: {set(statuses)}")
    return elapsed / requests


async def _run() -> dict[str, list[float]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    apps: dict[str, App] = {"bare": _bare()}
    for limits in (1, 2):  # one limit, and a per-second plus a per-minute limit
        apps[f"ours/{limits}"] = _ours(provider, limits)
        apps[f"slowapi/{limits}"] = _slowapi(SlowAPIMiddleware, limits)
        apps[f"slowapi_asgi/{limits}"] = _slowapi(SlowAPIASGIMiddleware, limits)
    for app in apps.values():
        await _time(app, WARMUP)
    results: dict[str, list[float]] = {name: [] for name in apps}
    gc.collect()
    for _ in range(ROUNDS):
        for name, app in apps.items():  # interleaved: machine noise hits every variant
            results[name].append(await _time(app, REQUESTS))
    provider.shutdown()
    return results


def main() -> None:
    results = asyncio.run(_run())
    medians = {name: statistics.median(times) for name, times in results.items()}
    bare = medians["bare"]
    print(f"{'variant (limits)':<18} {'median us/request':>18} {'added us':>10}")
    for name, median in medians.items():
        added = "" if name == "bare" else f"{(median - bare) * 1e6:.2f}"
        print(f"{name:<18} {median * 1e6:>18.2f} {added:>10}")
    for limits in (1, 2):
        ours = medians[f"ours/{limits}"] - bare
        for anchor in ("slowapi", "slowapi_asgi"):
            theirs = medians[f"{anchor}/{limits}"] - bare
            ratio = ours / theirs if theirs > 0 else float("nan")
            print(
                f"{limits} limit(s): (ours - bare) / ({anchor} - bare) = {ratio:.3f}"
                "   (target <= 0.1)"
            )


if __name__ == "__main__":
    main()
