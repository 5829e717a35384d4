"""Pool telemetry cost, side by side on the real PostgreSQL (AsyncEngine + asyncpg).

Variants, each on its own AsyncEngine (pool_size=5, warmed) and its own SDK
MeterProvider + InMemoryMetricReader:

- ``bare``: no instrumentation (its reader still collects, for symmetry);
- ``bare, 2nd engine``: the same again on another engine, a control: its ratio
  is what engine-to-engine differences alone (other connections, other server
  backends) produce, the noise floor for the other rows;
- ``ours``: ``otel_backpressure.instrument(engine)``, all eleven metrics;
- ``ours, timings off``: ``instrument(engine, timings=False)``;
- ``contrib``: ``SQLAlchemyInstrumentor().instrument(engine=..., skip_dep_check=True)``.

Each round runs every variant once, in a rotating order, for (a) checkout/checkin
alone and (b) checkout + ``SELECT 1``; the timed region is the cycles followed
by one collection, so no cost hides in the exporter's thread. The table shows
the median over rounds of each variant's time per cycle divided by ``bare``'s
in the same round.

    python -m benchmarks pool            # BACKPRESSURE_TEST_POSTGRES_URL or the local default
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import otel_backpressure

# Many short rounds: on a shared, noisy machine the variants of one round run
# close together in time, and the median of per-round ratios shrugs off the
# rounds that a neighbour's burst of work disturbed. Each round ends with one
# collection, so a collection every 1,000 checkouts (every 200 queries) is
# charged to the cycles: tens of times more often than a 60 s export interval
# would collect from a pool doing even a thousand checkouts a second.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "61"))
CYCLES = int(os.environ.get("BENCH_CYCLES", "1000"))
QUERY_ROUNDS = int(os.environ.get("BENCH_QUERY_ROUNDS", "401"))
QUERIES = int(os.environ.get("BENCH_QUERIES", "200"))


def _url() -> str:
    dsn = os.environ.get(
        "BACKPRESSURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


class Variant:
    __slots__ = ("engine", "name", "reader", "undo")

    def __init__(self, name: str, engine: AsyncEngine, reader: InMemoryMetricReader) -> None:
        self.name = name
        self.engine = engine
        self.reader = reader
        self.undo: Callable[[], None] = lambda: None


def _variant(name: str) -> Variant:
    engine = create_async_engine(_url(), pool_size=5, max_overflow=5)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    variant = Variant(name, engine, reader)
    if name == "ours":
        variant.undo = otel_backpressure.instrument(
            engine, meter_provider=provider, timings=True
        ).uninstrument
    elif name == "ours, timings off":
        variant.undo = otel_backpressure.instrument(
            engine, meter_provider=provider, timings=False
        ).uninstrument
    elif name == "contrib":
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().instrument(
            engine=engine.sync_engine, meter_provider=provider, skip_dep_check=True
        )
        variant.undo = SQLAlchemyInstrumentor().uninstrument
    return variant


async def _cycle(engine: AsyncEngine, n: int) -> None:
    for _ in range(n):
        async with engine.connect():
            pass


async def _query(engine: AsyncEngine, n: int) -> None:
    select_one = text("SELECT 1")
    for _ in range(n):
        async with engine.connect() as connection:
            await connection.execute(select_one)


async def _timed(
    variant: Variant, work: Callable[[AsyncEngine, int], Awaitable[None]], n: int
) -> float:
    start = time.perf_counter()
    await work(variant.engine, n)
    variant.reader.get_metrics_data()  # the collection is part of the cost
    return (time.perf_counter() - start) / n


Row = tuple[str, str, float, float, float]


async def _run() -> list[Row]:
    names = ["bare", "bare, 2nd engine", "ours", "ours, timings off", "contrib"]
    variants = [_variant(name) for name in names]
    try:
        for variant in variants:  # warm: open the connections, fill caches
            await _query(variant.engine, 50)
            await _cycle(variant.engine, 200)
        rows: list[Row] = []
        for label, work, n, rounds in (
            ("checkout/checkin", _cycle, CYCLES, ROUNDS),
            ("checkout + SELECT 1", _query, QUERIES, QUERY_ROUNDS),
        ):
            ratios: dict[str, list[float]] = {name: [] for name in names}
            extra: dict[str, list[float]] = {name: [] for name in names}
            bare_times: list[float] = []
            for round_ in range(rounds):
                shift = round_ % len(variants)
                order = variants[shift:] + variants[:shift]
                times = {v.name: await _timed(v, work, n) for v in order}
                bare_times.append(times["bare"])
                for name in names:
                    ratios[name].append(times[name] / times["bare"])
                    extra[name].append(times[name] - times["bare"])
            bare = statistics.median(bare_times)
            rows.extend(
                (
                    label,
                    name,
                    statistics.median(ratios[name]),
                    statistics.median(extra[name]) * 1e6,
                    bare * 1e6,
                )
                for name in names
            )
        return rows
    finally:
        for variant in variants:
            variant.undo()
            await variant.engine.dispose()


def main() -> None:
    rows = asyncio.run(_run())
    print(
        f"{ROUNDS} rounds of {CYCLES} cycles, {QUERY_ROUNDS} rounds of {QUERIES} queries, "
        "per variant; medians of per-round ratios and differences"
    )
    print(f"{'workload':<22}{'variant':<20}{'ratio to bare':>14}{'extra us/cycle':>16}")
    cycle_extra: dict[str, float] = {}
    for label, name, ratio, extra_us, bare_us in rows:
        suffix = f"   (bare: {bare_us:.1f} us/cycle)" if name == "bare" else ""
        print(f"{label:<22}{name:<20}{ratio:>14.3f}{extra_us:>16.2f}{suffix}")
        if label == "checkout/checkin":
            cycle_extra[name] = extra_us
    # A query round trip is too noisy to resolve a few microseconds directly;
    # the checkout's measured extra cost over the query's bare time bounds it.
    query_bare = next(bare for label, name, _, _, bare in rows if label != "checkout/checkin")
    print("checkout + SELECT 1, from the cycle's extra cost / bare query time:")
    for name, extra_us in cycle_extra.items():
        if name != "bare":
            print(f"{'':<22}{name:<20}{1 + extra_us / query_bare:>14.3f}")


if __name__ == "__main__":
    main()
