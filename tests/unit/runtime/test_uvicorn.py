"""A real uvicorn server started after instrumentation: its loop and anyio's limiter show."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.runtime import LOOP_NAME, POOL_NAME
from otel_backpressure.testing import MetricsCapture

TOKENS, EXTRA = 2, 1
SERVER_THREAD = "uvicorn-server"


def _app(release: threading.Event) -> Starlette:
    def sync_endpoint(request: Request) -> PlainTextResponse:  # runs on anyio's limiter
        release.wait(30)
        return PlainTextResponse("done")

    async def blocking_endpoint(request: Request) -> PlainTextResponse:
        time.sleep(0.2)  # noqa: ASYNC251 - the mistake this part makes visible
        return PlainTextResponse("blocked")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = TOKENS
        yield

    return Starlette(
        routes=[Route("/sync", sync_endpoint), Route("/block", blocking_endpoint)],
        lifespan=lifespan,
    )


@contextlib.contextmanager
def _serve(app: Starlette, loop: str) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, loop=loop, log_level="warning", access_log=False))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=SERVER_THREAD, daemon=True
    )
    thread.start()
    try:
        _until(lambda: server.started)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _until(condition: Callable[[], bool]) -> None:
    """Poll state held by other threads until it holds; the bound only catches a hang."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "never got there"
        time.sleep(0.005)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sync_endpoints_fill_anyio_limiter_and_a_blocking_route_shows_as_loop_delay(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture, loop: str
) -> None:
    release = threading.Event()

    def anyio_state() -> dict[str, object]:
        return {
            key.removeprefix("backpressure.thread_pool."): value
            for key, value in metrics.snapshot({POOL_NAME: "anyio"}).items()
            if not key.endswith("wait_time")
        }

    with _serve(_app(release), loop) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            callers = [
                threading.Thread(target=client.get, args=("/sync",)) for _ in range(TOKENS + EXTRA)
            ]
            for caller in callers:
                caller.start()
            full = {"used": TOKENS, "max": TOKENS, "queue.length": EXTRA, "usage": 1.0}
            _until(lambda: anyio_state() == full)
            release.set()
            for caller in callers:
                caller.join(30)
            assert anyio_state() == {"used": 0, "max": TOKENS, "queue.length": 0, "usage": 0.0}
            assert client.get("/block").text == "blocked"
        utilization = metrics.value(
            "backpressure.event_loop.utilization", {LOOP_NAME: SERVER_THREAD}
        )
        if loop == "asyncio":
            assert utilization is not None
            assert 0.0 <= utilization <= 1.0
        else:
            assert utilization is None  # libuv polls where Python cannot time it
    # the sample late by the block was taken in a later iteration, before the loop stopped
    delay = metrics.histogram("backpressure.event_loop.delay", {LOOP_NAME: SERVER_THREAD})
    assert delay is not None
    if loop == "asyncio":
        assert delay.max >= 0.2
    else:  # how late the timer ran, and libuv's clock is in ms
        assert delay.max >= 0.2 - 0.01 - 0.001
    # the server's loop has ended: its series stop, and so do its limiter's
    assert metrics.value("backpressure.event_loop.utilization", {LOOP_NAME: SERVER_THREAD}) is None
    assert anyio_state() == {}
