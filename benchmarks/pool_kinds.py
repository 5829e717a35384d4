"""The pool kinds of issue 12 side by side in one run: psycopg_pool, redis-py, httpx, aiohttp.

For each library, every variant gets its own pool or client and its own SDK
``MeterProvider`` (+ ``InMemoryMetricReader``) and ``TracerProvider`` (no
exporter), then each round runs every variant once, in a rotating order:

- ``bare``: no instrumentation;
- ``ours``: ``otel_backpressure.instrument(pool_or_client)``, every metric;
- ``ours, timings off``: ``instrument(..., timings=False)``;
- ``contrib``: opentelemetry-python-contrib's instrumentation of that one
  client (``PsycopgInstrumentor.instrument_connection`` on each pool
  connection, ``RedisInstrumentor.instrument_client``,
  ``HTTPXClientInstrumentor.instrument_client``, aiohttp-client's
  ``create_trace_config``): spans (and, for the HTTP clients, request
  metrics), a different product, shown as the anchor a user would otherwise
  install.

Workloads: psycopg_pool and redis-py a bare checkout/checkin cycle
(``getconn``/``putconn``, ``get_connection``/``release``) and one with a
trivial command (``SELECT 1``, ``PING``); httpx (sync) and aiohttp a GET of a
two-byte answer from a uvicorn server in its own process on loopback. The
timed region is the operations followed by one collection. The table is the
median over rounds of each variant's time per operation divided by ``bare``'s
in the same round.

    python -m benchmarks pool_kinds     # BACKPRESSURE_TEST_POSTGRES_URL / _REDIS_URL or defaults
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import otel_backpressure
from benchmarks._redis_server import free_port

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "41"))
CYCLES = int(os.environ.get("BENCH_CYCLES", "1000"))
COMMANDS = int(os.environ.get("BENCH_COMMANDS", "200"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100"))
VARIANTS = ("bare", "ours", "ours, timings off", "contrib")

Work = Callable[[int], None]


def _postgres() -> str:
    return os.environ.get(
        "BACKPRESSURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )


def _redis() -> str:
    return os.environ.get("BACKPRESSURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Variant:
    """One variant's client, its reader, and its two workloads."""

    __slots__ = ("cycle", "name", "reader", "request")

    def __init__(self, name: str, reader: InMemoryMetricReader) -> None:
        self.name = name
        self.reader = reader
        self.cycle: Work | None = None
        self.request: Work = lambda n: None


def _providers() -> tuple[MeterProvider, TracerProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), TracerProvider(), reader


def _ours(stack: ExitStack, name: str, target: Any, provider: MeterProvider) -> None:
    if name.startswith("ours"):
        handle = otel_backpressure.instrument(
            target, meter_provider=provider, timings=name == "ours"
        )
        stack.callback(handle.uninstrument)


def psycopg_variant(stack: ExitStack, name: str) -> Variant:
    import psycopg_pool
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    meters, tracers, reader = _providers()
    configure = None
    if name == "contrib":

        def configure(connection: Any) -> None:
            PsycopgInstrumentor().instrument_connection(connection, tracer_provider=tracers)

    pool = psycopg_pool.ConnectionPool(
        _postgres(), min_size=2, max_size=2, configure=configure, open=True
    )
    stack.callback(pool.close)
    pool.wait()
    _ours(stack, name, pool, meters)
    variant = Variant(name, reader)

    def cycle(n: int) -> None:
        getconn, putconn = pool.getconn, pool.putconn
        for _ in range(n):
            putconn(getconn())

    def request(n: int) -> None:
        for _ in range(n):
            with pool.connection() as connection:
                connection.execute("SELECT 1").fetchone()

    variant.cycle, variant.request = cycle, request
    return variant


def redis_variant(stack: ExitStack, name: str) -> Variant:
    import redis
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    meters, tracers, reader = _providers()
    client = redis.Redis.from_url(_redis(), max_connections=4)
    stack.callback(client.close)
    if name == "contrib":
        RedisInstrumentor.instrument_client(client, tracer_provider=tracers)
        stack.callback(RedisInstrumentor.uninstrument_client, client)
    _ours(stack, name, client, meters)
    pool = client.connection_pool
    variant = Variant(name, reader)

    def cycle(n: int) -> None:
        for _ in range(n):
            pool.release(pool.get_connection())

    def request(n: int) -> None:
        ping = client.ping
        for _ in range(n):
            ping()

    variant.cycle, variant.request = cycle, request
    return variant


def httpx_variant(stack: ExitStack, name: str, url: str) -> Variant:
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    meters, tracers, reader = _providers()
    client = httpx.Client(limits=httpx.Limits(max_connections=4))
    stack.callback(client.close)
    if name == "contrib":
        HTTPXClientInstrumentor.instrument_client(
            client, tracer_provider=tracers, meter_provider=meters
        )
    _ours(stack, name, client, meters)
    variant = Variant(name, reader)

    def request(n: int) -> None:
        get = client.get
        for _ in range(n):
            get(url)

    variant.request = request
    return variant


def aiohttp_variant(
    stack: ExitStack, name: str, url: str, loop: asyncio.AbstractEventLoop
) -> Variant:
    import aiohttp
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    meters, tracers, reader = _providers()

    async def make() -> aiohttp.ClientSession:
        configs = []
        if name == "contrib":
            configs.append(create_trace_config(tracer_provider=tracers, meter_provider=meters))
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4), trace_configs=configs)

    session = loop.run_until_complete(make())
    stack.callback(lambda: loop.run_until_complete(session.close()))
    _ours(stack, name, session, meters)
    variant = Variant(name, reader)

    async def requests(n: int) -> None:
        for _ in range(n):
            async with session.get(url) as response:
                await response.read()

    variant.request = lambda n: loop.run_until_complete(requests(n))
    return variant


def _timed(variant: Variant, work: Work, n: int) -> float:
    start = time.perf_counter()
    work(n)
    variant.reader.get_metrics_data()  # the collection is part of the cost
    return (time.perf_counter() - start) / n


Row = tuple[str, str, float, float, float]


def _measure(label: str, variants: list[Variant], pick: str, n: int) -> list[Row]:
    works = {v.name: getattr(v, pick) for v in variants}
    for variant in variants:  # warm: connections open, caches filled
        works[variant.name](max(10, n // 10))
    ratios: dict[str, list[float]] = {v.name: [] for v in variants}
    extra: dict[str, list[float]] = {v.name: [] for v in variants}
    bare_times: list[float] = []
    for round_ in range(ROUNDS):
        shift = round_ % len(variants)
        order = variants[shift:] + variants[:shift]
        times = {v.name: _timed(v, works[v.name], n) for v in order}
        bare_times.append(times["bare"])
        for v in variants:
            ratios[v.name].append(times[v.name] / times["bare"])
            extra[v.name].append(times[v.name] - times["bare"])
    bare = statistics.median(bare_times)
    return [
        (
            label,
            v.name,
            statistics.median(ratios[v.name]),
            statistics.median(extra[v.name]) * 1e6,
            bare * 1e6,
        )
        for v in variants
    ]


def _server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "benchmarks._http_app:app", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}/"
    import httpx

    for _ in range(500):
        try:
            httpx.get(url)
            return process, url
        except httpx.TransportError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("uvicorn did not start")


def run() -> list[Row]:
    rows: list[Row] = []
    with ExitStack() as stack:
        psycopg = [psycopg_variant(stack, name) for name in VARIANTS]
        rows += _measure("psycopg_pool checkout/checkin", psycopg, "cycle", CYCLES)
        rows += _measure("psycopg_pool + SELECT 1", psycopg, "request", COMMANDS)
        redis = [redis_variant(stack, name) for name in VARIANTS]
        rows += _measure("redis-py checkout/checkin", redis, "cycle", CYCLES)
        rows += _measure("redis-py + PING", redis, "request", COMMANDS)
        process, url = _server()
        stack.callback(process.wait, 10)
        stack.callback(process.terminate)
        httpx = [httpx_variant(stack, name, url) for name in VARIANTS]
        rows += _measure("httpx GET", httpx, "request", REQUESTS)
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        aiohttp = [aiohttp_variant(stack, name, url, loop) for name in VARIANTS]
        rows += _measure("aiohttp GET", aiohttp, "request", REQUESTS)
    return rows


def main() -> None:
    rows = run()
    print(
        f"{ROUNDS} rounds per workload ({CYCLES} cycles, {COMMANDS} commands, "
        f"{REQUESTS} requests per variant per round); medians of per-round ratios"
    )
    print(f"{'workload':<32}{'variant':<20}{'ratio to bare':>14}{'extra us/op':>13}")
    for label, name, ratio, extra_us, bare_us in rows:
        suffix = f"   (bare: {bare_us:.1f} us/op)" if name == "bare" else ""
        print(f"{label:<32}{name:<20}{ratio:>14.3f}{extra_us:>13.2f}{suffix}")


if __name__ == "__main__":
    main()
