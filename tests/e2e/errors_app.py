"""A plain FastAPI app, as users write it, with none of this package's middleware.

Run by ``tests/e2e/test_errors_uvicorn.py`` under ``opentelemetry-instrument
uvicorn``: it raises the package's exceptions but configures nothing, adds no
``ErrorMappingMiddleware`` and calls no instrumentor (the distro auto-loads
it). Each route raises inside the app's own span.
"""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import trace

from otel_backpressure.errors import NotFoundError, PoolExhaustedError

app = FastAPI()
tracer = trace.get_tracer("e2e.errors_app")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/missing")
async def missing() -> None:
    with tracer.start_as_current_span("app.lookup"):
        raise NotFoundError("no such player")


@app.get("/exhausted")
async def exhausted() -> None:
    with tracer.start_as_current_span("app.checkout"):
        raise PoolExhaustedError("pool dry")


@app.get("/broken")
async def broken() -> None:
    with tracer.start_as_current_span("app.compute"):
        raise LookupError("plain bug")
