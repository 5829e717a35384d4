"""RateLimitMiddleware in a FastAPI app instrumented by the contrib FastAPIInstrumentor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter
from otel_backpressure.ratelimit.middleware import RateLimitMiddleware
from otel_backpressure.testing import FakeClock, MetricsCapture


@pytest.fixture
async def client(
    metrics: MetricsCapture, tracer_provider: TracerProvider, clock: FakeClock
) -> AsyncIterator[httpx.AsyncClient]:
    store = MemoryStore(clock=clock)
    limiter = RateLimiter(
        [Policy("per-second", rate=1, period=1.0)],
        store=store,
        meter_provider=metrics.meter_provider,
    )
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.20", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
        await store.aclose()


async def test_fastapi_server_span_carries_the_rejection_with_status_unset(
    client: httpx.AsyncClient, span_exporter: InMemorySpanExporter
) -> None:
    allowed = await client.get("/items/1")
    rejected = await client.get("/items/1")
    assert allowed.json() == {"item": 1}
    assert allowed.headers["ratelimit"] == '"per-second";r=0;t=1'
    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "1"

    server = [s for s in span_exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(server) == 2
    first, second = server
    assert "backpressure.rate_limit.result" not in (first.attributes or {})
    assert second.attributes is not None
    assert second.attributes["backpressure.rate_limit.policy"] == "per-second"
    assert second.attributes["backpressure.rate_limit.result"] == "rejected"
    assert second.status.status_code is StatusCode.UNSET
