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
two-byte answer from a uvicorn server in its own process on loopback.

Each round times, per variant (after a few untimed operations that warm its
caches), the operations, then a collection (which
drains what the operations buffered: the timing samples are folded into the
histograms there), then a second collection right after it, which has nothing
new to fold: what every collection costs whatever the traffic (the SDK
exporting each observable series, the pool reads). Three figures per variant,
each the median over rounds of a ratio to ``bare`` in the same round:

- ``per op``: (operations + first collection - second collection) / n, the
  cost of an operation including its share of the deferred work, against
  which the targets are set;
- ``1 collection/round``: (operations + first collection) / n, a collection
  every ``CYCLES``/``COMMANDS``/``REQUESTS`` operations (milliseconds apart;
  an exporter collects every 10-60 s), as earlier runs reported it;
- ``collection``: the second collection's time, in microseconds.

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
from typing import Any, NamedTuple

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


class Timing(NamedTuple):
    """One variant's round: seconds per operation, and one collection's seconds."""

    per_op: float  # operations + what the first collection folded, per operation
    all_in: float  # operations + the whole first collection, per operation
    collection: float  # the second collection: nothing new to fold


def _timed(variant: Variant, work: Work, n: int) -> Timing:
    collect, clock = variant.reader.get_metrics_data, time.perf_counter
    # Untimed, a few operations first: the variant timed before this one (and its
    # collections) left the caches full of its own code, which would otherwise
    # be charged to whichever variant follows it in the rotation. Their timings
    # are folded by the timed collection: charged to the n operations (5% more
    # values than they buffered, against this package).
    collect()
    work(max(1, n // 20))
    start = clock()
    work(n)
    worked = clock()
    collect()  # folds what the operations buffered
    first = clock()
    collect()  # nothing new to fold: the cost of any collection
    second = clock()
    fixed = second - first
    return Timing((worked - start + (first - worked) - fixed) / n, (first - start) / n, fixed)


class Row(NamedTuple):
    workload: str
    variant: str
    ratio: float  # per op, to bare
    extra_us: float  # per op, over bare
    all_in: float  # with one collection per round, to bare
    collection_us: float
    bare_us: float


def _measure(label: str, variants: list[Variant], pick: str, n: int) -> list[Row]:
    works = {v.name: getattr(v, pick) for v in variants}
    for variant in variants:  # warm: connections open, caches filled
        works[variant.name](max(10, n // 10))
        variant.reader.get_metrics_data()
    ratios: dict[str, list[float]] = {v.name: [] for v in variants}
    all_in: dict[str, list[float]] = {v.name: [] for v in variants}
    extra: dict[str, list[float]] = {v.name: [] for v in variants}
    collections: dict[str, list[float]] = {v.name: [] for v in variants}
    bare_times: list[float] = []
    for round_ in range(ROUNDS):
        shift = round_ % len(variants)
        order = variants[shift:] + variants[:shift]
        times = {v.name: _timed(v, works[v.name], n) for v in order}
        bare = times["bare"]
        bare_times.append(bare.per_op)
        for v in variants:
            mine = times[v.name]
            ratios[v.name].append(mine.per_op / bare.per_op)
            all_in[v.name].append(mine.all_in / bare.all_in)
            extra[v.name].append(mine.per_op - bare.per_op)
            collections[v.name].append(mine.collection)
    median = statistics.median
    return [
        Row(
            label,
            v.name,
            median(ratios[v.name]),
            median(extra[v.name]) * 1e6,
            median(all_in[v.name]),
            median(collections[v.name]) * 1e6,
            median(bare_times) * 1e6,
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
    print(
        f"{'workload':<32}{'variant':<20}{'per op':>8}{'extra us/op':>13}"
        f"{'1 collection/round':>20}{'collection us':>15}"
    )
    for row in rows:
        suffix = f"   (bare: {row.bare_us:.1f} us/op)" if row.variant == "bare" else ""
        print(
            f"{row.workload:<32}{row.variant:<20}{row.ratio:>8.3f}{row.extra_us:>13.2f}"
            f"{row.all_in:>20.3f}{row.collection_us:>15.0f}{suffix}"
        )


if __name__ == "__main__":
    main()
