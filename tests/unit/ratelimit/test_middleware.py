"""RateLimitMiddleware in a real Starlette app behind the contrib OpenTelemetry ASGI middleware.

In-memory store and a fake clock: every decision, header and count is exact.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from otel_backpressure.errors import ErrorMappingMiddleware
from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter
from otel_backpressure.ratelimit.middleware import RateLimitMiddleware
from otel_backpressure.testing import FakeClock, MetricsCapture

REQUESTS = "backpressure.rate_limit.requests"
PER_SECOND = Policy("per-second", rate=2, period=1.0, burst=2)
CLIENT = "203.0.113.7"


def requests_count(metrics: MetricsCapture, policy: str, result: str) -> float | None:
    return metrics.value(
        REQUESTS,
        {"backpressure.rate_limit.policy": policy, "backpressure.rate_limit.result": result},
    )


class Harness:
    """The app under test and a way to call it as a given peer."""

    def __init__(self, app: Any, clock: FakeClock, spans: InMemorySpanExporter) -> None:
        self.app = app
        self.clock = clock
        self.spans = spans
        self.endpoint_calls = 0
        self._clients: list[httpx.AsyncClient] = []

    def client(self, peer: str = CLIENT) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(peer, 50000))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        self._clients.append(client)
        return client

    async def get(
        self, path: str = "/", *, peer: str = CLIENT, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client(peer).get(path, headers=headers)

    def server_spans(self) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.kind == SpanKind.SERVER]

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def build(
    metrics: MetricsCapture,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    clock: FakeClock,
) -> AsyncIterator[Callable[..., Harness]]:
    harnesses: list[Harness] = []
    stores: list[MemoryStore] = []

    def make(
        policies: list[Policy] | None = None, *, limiter: RateLimiter | None = None, **options: Any
    ) -> Harness:
        if limiter is None:
            stores.append(MemoryStore(clock=clock))
            limiter = RateLimiter(
                policies or [PER_SECOND],
                store=stores[-1],
                meter_provider=metrics.meter_provider,
                clock=clock,
            )

        async def hello(request: Request) -> PlainTextResponse:
            harness.endpoint_calls += 1
            return PlainTextResponse("ok", headers={"x-app": "kept"})

        paths = ["/", "/healthz", "/login", "/api/items/{item}", "/metrics"]
        inner = Starlette(routes=[Route(path, hello) for path in paths])
        limited = RateLimitMiddleware(inner, limiter=limiter, **options)
        app = OpenTelemetryMiddleware(limited, tracer_provider=tracer_provider)
        harness = Harness(app, clock, span_exporter)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        await harness.close()
    for store in stores:
        await store.aclose()  # stops its cleanup task


async def test_burst_then_429_with_retry_after_until_the_interval_passes(
    build: Callable[..., Harness], metrics: MetricsCapture
) -> None:
    harness = build()
    first, second, third = [await harness.get() for _ in range(3)]
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert third.headers["retry-after"] == "1"  # 0.5 s rounded up to whole seconds
    assert third.headers["content-type"] == "application/problem+json"
    assert third.json() == {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "rate limit exceeded",
        "instance": "/",
    }
    assert harness.endpoint_calls == 2  # a rejection never reaches the app

    harness.clock.advance(0.5)
    assert (await harness.get()).status_code == 200
    assert requests_count(metrics, "per-second", "allowed") == 3
    assert requests_count(metrics, "per-second", "rejected") == 1


async def test_ratelimit_headers_on_allowed_and_rejected_responses(
    build: Callable[..., Harness],
) -> None:
    harness = build()
    allowed = await harness.get()
    assert allowed.headers["ratelimit-policy"] == '"per-second";q=2;w=1'
    assert allowed.headers["ratelimit"] == '"per-second";r=1;t=1'
    assert allowed.headers["x-app"] == "kept"  # the app's own headers stay
    assert "x-ratelimit-limit" not in allowed.headers
    await harness.get()
    rejected = await harness.get()
    assert rejected.status_code == 429
    assert rejected.headers["ratelimit-policy"] == '"per-second";q=2;w=1'
    assert rejected.headers["ratelimit"] == '"per-second";r=0;t=1'


async def test_legacy_headers_and_window_of_a_slow_policy(build: Callable[..., Harness]) -> None:
    per_minute = Policy("per-minute", rate=30, period=60.0, burst=10)
    harness = build([per_minute], legacy_headers=True)
    response = await harness.get()
    # q=10 refills at one per 2 s: w=20 s; after one request 2 s to reset.
    assert response.headers["ratelimit-policy"] == '"per-minute";q=10;w=20'
    assert response.headers["ratelimit"] == '"per-minute";r=9;t=2'
    assert response.headers["x-ratelimit-limit"] == "10"
    assert response.headers["x-ratelimit-remaining"] == "9"
    assert response.headers["x-ratelimit-reset"] == "2"


async def test_several_policies_listed_and_the_tightest_reported(
    build: Callable[..., Harness], metrics: MetricsCapture
) -> None:
    per_minute = Policy("per-minute", rate=3, period=60.0)
    harness = build([PER_SECOND, per_minute])
    response = await harness.get()
    assert response.headers["ratelimit-policy"] == ('"per-second";q=2;w=1, "per-minute";q=3;w=60')
    assert response.headers["ratelimit"] == '"per-second";r=1;t=1'
    for _ in range(2):
        harness.clock.advance(1)
        assert (await harness.get()).status_code == 200
    harness.clock.advance(1)
    rejected = await harness.get()
    assert rejected.status_code == 429
    assert rejected.headers["ratelimit"].startswith('"per-minute";r=0;')
    assert requests_count(metrics, "per-minute", "rejected") == 1


async def test_spoofed_forwarded_header_from_untrusted_peer_changes_nothing(
    build: Callable[..., Harness],
) -> None:
    harness = build(trusted_proxies=["10.0.0.0/8"])
    statuses = [
        (await harness.get(headers={"x-forwarded-for": f"198.51.100.{index}"})).status_code
        for index in range(3)
    ]
    assert statuses == [200, 200, 429]  # one peer, one bucket, whatever it claims


async def test_trusted_proxy_clients_are_limited_separately(build: Callable[..., Harness]) -> None:
    harness = build(trusted_proxies=["10.0.0.0/8"])

    async def via_proxy(chain: str) -> int:
        response = await harness.get(peer="10.0.0.1", headers={"x-forwarded-for": chain})
        return response.status_code

    # The client's own (spoofed) prefix differs each time; the proxy-written hop does not.
    assert [await via_proxy(f"6.6.6.{i}, 198.51.100.1, 10.0.0.2") for i in range(3)] == [
        200,
        200,
        429,
    ]
    assert await via_proxy("198.51.100.2, 10.0.0.2") == 200
    assert (await harness.get(peer="10.0.0.1")).status_code == 200  # the proxy itself


async def test_exempt_paths_are_neither_limited_nor_counted(
    build: Callable[..., Harness], metrics: MetricsCapture
) -> None:
    harness = build(exempt_paths=["/healthz", re.compile(r"/met\w+")])
    for _ in range(5):
        response = await harness.get("/healthz")
        assert response.status_code == 200
        assert "ratelimit" not in response.headers
        assert (await harness.get("/metrics")).status_code == 200
    assert [(await harness.get()).status_code for _ in range(3)] == [200, 200, 429]
    assert requests_count(metrics, "per-second", "allowed") == 2


async def test_exempt_prefixes_match_whole_segments(build: Callable[..., Harness]) -> None:
    harness = build(exempt_paths=["/api", "/health"])
    assert [(await harness.get("/api/items/1")).status_code for _ in range(3)] == [200] * 3
    # "/health" is not a segment prefix of "/healthz": that path is limited
    assert [(await harness.get("/healthz")).status_code for _ in range(3)] == [200, 200, 429]


async def test_sync_key_function_replaces_the_address(build: Callable[..., Harness]) -> None:
    def api_key(scope: dict[str, Any]) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                return "key:" + value.decode()
        return None  # no key: not limited

    harness = build(key_func=api_key)
    alice = {"x-api-key": "alice"}
    assert [(await harness.get(headers=alice)).status_code for _ in range(3)] == [200, 200, 429]
    assert (await harness.get(headers={"x-api-key": "bob"})).status_code == 200
    assert [(await harness.get()).status_code for _ in range(4)] == [200] * 4


async def test_async_key_function(build: Callable[..., Harness]) -> None:
    async def by_path(scope: dict[str, Any]) -> str:
        return str(scope["path"])

    harness = build(key_func=by_path)
    assert [(await harness.get("/")).status_code for _ in range(3)] == [200, 200, 429]
    assert (await harness.get("/login")).status_code == 200


async def test_route_policies_add_to_the_limiter_policies(
    build: Callable[..., Harness], metrics: MetricsCapture
) -> None:
    login = Policy("login", rate=1, period=60.0, burst=1)
    items = Policy("items", rate=1, period=10.0, burst=1)
    harness = build(route_policies={"/login": [login], re.compile(r"/api/items/\d+"): [items]})
    first = await harness.get("/login")
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"per-second";q=2;w=1, "login";q=1;w=60'
    second = await harness.get("/login")
    assert second.status_code == 429
    assert second.headers["retry-after"] == "60"
    assert second.headers["ratelimit"] == '"login";r=0;t=60'
    assert requests_count(metrics, "login", "rejected") == 1

    assert (await harness.get("/api/items/7")).status_code == 200
    assert (await harness.get("/api/items/7")).status_code == 429
    harness.clock.advance(0.5)
    plain = await harness.get("/")  # the global policy still applies, no route policy
    assert plain.status_code == 200
    assert plain.headers["ratelimit-policy"] == '"per-second";q=2;w=1'


async def test_dry_run_rejects_nothing_and_meters_what_it_would_reject(
    build: Callable[..., Harness], metrics: MetricsCapture
) -> None:
    harness = build(dry_run=True)
    responses = [await harness.get() for _ in range(4)]
    assert [response.status_code for response in responses] == [200] * 4
    assert harness.endpoint_calls == 4
    assert requests_count(metrics, "per-second", "allowed") == 2
    assert requests_count(metrics, "per-second", "dry_run_rejected") == 2
    assert requests_count(metrics, "per-second", "rejected") in (0, None)
    spans = harness.server_spans()
    assert [span.attributes.get("backpressure.rate_limit.result") for span in spans] == [
        None,
        None,
        "dry_run_rejected",
        "dry_run_rejected",
    ]


async def test_rejection_tags_the_server_span_and_leaves_status_unset(
    build: Callable[..., Harness],
) -> None:
    harness = build()
    for _ in range(3):
        await harness.get()
    allowed, _, rejected = harness.server_spans()
    assert "backpressure.rate_limit.policy" not in (allowed.attributes or {})
    assert rejected.attributes is not None
    assert rejected.attributes["backpressure.rate_limit.policy"] == "per-second"
    assert rejected.attributes["backpressure.rate_limit.result"] == "rejected"
    assert rejected.attributes.get("http.response.status_code", None) in (429, None)
    assert rejected.status.status_code is StatusCode.UNSET
    assert rejected.status.description is None


async def test_no_client_identity_in_metrics_or_spans(
    build: Callable[..., Harness], metrics: MetricsCapture
) -> None:
    harness = build(trusted_proxies=["10.0.0.0/8"])
    for _ in range(3):
        await harness.get(peer="10.0.0.1", headers={"x-forwarded-for": "198.51.100.77"})
    values: list[str] = []
    for metric in metrics.collect().values():
        if metric.name.startswith("backpressure."):
            for point in metric.data.data_points:
                values.extend(str(value) for value in (point.attributes or {}).values())
    assert values
    assert not [value for value in values if "198.51.100" in value or "10.0.0" in value]
    for span in harness.server_spans():
        assert "198.51.100" not in str(span.status.description)
        assert "198.51.100" not in str(span.attributes.get("backpressure.rate_limit.policy"))


async def test_failing_key_function_lets_the_request_through(
    build: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(scope: dict[str, Any]) -> str:
        raise RuntimeError("key lookup down")

    harness = build(key_func=broken)
    with caplog.at_level(logging.WARNING, logger="otel_backpressure.ratelimit.middleware"):
        statuses = [(await harness.get()).status_code for _ in range(5)]
    assert statuses == [200] * 5
    # logged once, not once per request
    assert len([r for r in caplog.records if "letting requests through" in r.message]) == 1
    assert "failures=5" in repr(harness.app.app)


async def test_headers_can_be_switched_off(build: Callable[..., Harness]) -> None:
    harness = build(headers=False)
    response = await harness.get()
    assert "ratelimit" not in response.headers
    assert "ratelimit-policy" not in response.headers
    await harness.get()
    rejected = await harness.get()
    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "1"
    assert "ratelimit" not in rejected.headers


async def test_non_http_scopes_pass_straight_through(clock: FakeClock) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    limiter = RateLimiter([Policy("p", rate=1, period=1.0)], store=MemoryStore(clock=clock))
    middleware = RateLimitMiddleware(app, limiter=limiter)

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        raise AssertionError("nothing should be sent")

    for kind in ("lifespan", "websocket", "lifespan"):
        await middleware({"type": kind}, receive, send)
    assert seen == ["lifespan", "websocket", "lifespan"]


@pytest.mark.parametrize(
    ("options", "error", "argument"),
    [
        ({"trusted_proxies": ["10.0.0.0/40"]}, ValueError, "trusted_proxies"),
        ({"exempt_paths": ["healthz"]}, ValueError, "exempt_paths"),
        ({"exempt_paths": "/healthz"}, TypeError, "exempt_paths"),
        ({"route_policies": {"login": [PER_SECOND]}}, ValueError, "starting with '/'"),
        ({"route_policies": {"/login": []}}, ValueError, "route_policies"),
        ({"route_policies": {"/login": PER_SECOND}}, TypeError, "route_policies"),
        ({"route_policies": {"/login": ["login"]}}, TypeError, "route_policies"),
        ({"route_policies": {"/login": [PER_SECOND]}}, ValueError, "repeats the limiter"),
        (
            {
                "route_policies": {
                    "/a": [Policy("x", rate=1, period=1.0)],
                    "/b": [Policy("x", rate=2, period=1.0)],
                }
            },
            ValueError,
            "two different policies",
        ),
        ({"key_func": "client"}, TypeError, "key_func"),
        ({"forwarded_header": "x-real-ip"}, ValueError, "forwarded_header"),
    ],
)
def test_bad_arguments_are_named(
    clock: FakeClock, options: dict[str, Any], error: type[Exception], argument: str
) -> None:
    limiter = RateLimiter([PER_SECOND], store=MemoryStore(clock=clock))
    with pytest.raises(error, match=argument):
        RateLimitMiddleware(Starlette(), limiter=limiter, **options)


def test_limiter_is_required_to_be_a_limiter() -> None:
    with pytest.raises(TypeError, match="limiter"):
        RateLimitMiddleware(Starlette(), limiter=object())  # type: ignore[arg-type]


def test_policy_names_must_be_header_safe() -> None:
    for name in ("pér-second", "per\nsecond"):
        with pytest.raises(ValueError, match="printable ASCII"):
            Policy(name, rate=1, period=1.0)


@pytest.mark.parametrize("legacy_headers", [False, True])
@pytest.mark.parametrize("path", ["/", "/api/items/7"])
async def test_a_429_is_the_same_from_either_middleware(
    metrics: MetricsCapture, path: str, legacy_headers: bool
) -> None:
    # the middleware rejecting, and the app calling limiter.check() with
    # ErrorMappingMiddleware answering the error: one body, the same headers
    clocks = FakeClock(), FakeClock()
    policies = [PER_SECOND, Policy("per-minute", rate=3, period=60)]
    by_middleware, by_check = (
        RateLimiter(policies, store=MemoryStore(clock=clock), meter_provider=metrics.meter_provider)
        for clock in clocks
    )

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    async def checking(scope: Any, receive: Any, send: Any) -> None:
        await by_check.check(scope["client"][0])
        await ok(scope, receive, send)

    apps = [
        RateLimitMiddleware(ok, limiter=by_middleware, legacy_headers=legacy_headers),
        ErrorMappingMiddleware(checking),
    ]
    responses: list[list[httpx.Response]] = [[], []]
    for gap in (0, 0, 0, 0.3):
        for clock in clocks:
            clock.advance(gap)
        for app, answered in zip(apps, responses, strict=True):
            transport = httpx.ASGITransport(app=app, client=(CLIENT, 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answered.append(await client.get(path))
    assert [r.status_code for r in responses[0]] == [200, 200, 429, 429]
    assert [r.status_code for r in responses[1]] == [200, 200, 429, 429]
    for rejected, raised in zip(responses[0][2:], responses[1][2:], strict=True):
        assert rejected.content == raised.content
        assert rejected.json()["instance"] == path
        expected = dict(raised.headers)
        if legacy_headers:  # an option of the middleware only
            assert {key for key in rejected.headers if key.startswith("x-ratelimit-")} == {
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
            }
            expected.update((k, v) for k, v in rejected.headers.items() if k.startswith("x-"))
        assert dict(rejected.headers) == expected
        assert {"retry-after", "ratelimit", "ratelimit-policy"} <= expected.keys()
    for limiter in (by_middleware, by_check):
        await limiter.store.aclose()  # type: ignore[union-attr]


async def test_raw_asgi_app_without_headers_gets_them_added(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204})  # no "headers" key
        await send({"type": "http.response.body", "body": b""})

    store = MemoryStore(clock=clock)
    middleware = RateLimitMiddleware(app, limiter=RateLimiter([PER_SECOND], store=store))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/", "headers": [], "client": ("198.51.100.3", 1)}
    await middleware(scope, receive, send)
    await store.aclose()
    assert sent[0]["headers"] == [
        (b"ratelimit-policy", b'"per-second";q=2;w=1'),
        (b"ratelimit", b'"per-second";r=1;t=1'),
    ]
    assert sent[1] == {"type": "http.response.body", "body": b""}
