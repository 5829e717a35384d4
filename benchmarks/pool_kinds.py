"""The pool kinds of issue 12 side by side in one run: psycopg_pool, redis-py, httpx, aiohttp.

For each library, every variant has its own SDK ``MeterProvider`` (+
``InMemoryMetricReader``) and ``TracerProvider`` (no exporter):

- ``bare``: no instrumentation;
- ``bare, again``: the same, run as a variant of its own: the A/A control, whose
  ratio to ``bare`` is what the method alone makes of no difference;
- ``ours``: ``otel_backpressure.instrument(pool_or_client)``, every metric;
- ``ours, timings off``: ``instrument(..., timings=False)``;
- ``contrib``: opentelemetry-python-contrib's instrumentation of that one
  client (``PsycopgInstrumentor.instrument_connection`` on each pool
  connection, ``RedisInstrumentor.instrument_client``,
  ``HTTPXClientInstrumentor.instrument_client``, aiohttp-client's
  ``create_trace_config``): spans (and, for the HTTP clients, request
  metrics), a different product, shown as the anchor a user would otherwise
  install; it keeps a pool or client of its own;
- ``floor`` (psycopg_pool and redis-py cycles): two hooks that only read the
  clock three times and stamp the connection, recording nothing: the least
  any per-checkout wait and use time can cost (see ``_floor``).

``bare``, ``bare, again``, ``ours``, ``ours, timings off`` and ``floor`` share their pools or
clients and instrument them only while they run (see ``Variant``).

Workloads: psycopg_pool and redis-py a bare checkout/checkin cycle
(``getconn``/``putconn``, ``get_connection``/``release``) and one with a
trivial command (``SELECT 1``, ``PING``); httpx (sync) and aiohttp a GET of a
two-byte answer from a uvicorn server in its own process on loopback.

The cycles (and aiohttp) are timed in blocks (``_measure``): each round runs
every variant once, in an order shuffled per round, after a few untimed
operations that warm its caches. The commands and httpx requests alternate
one by one (``_interleaved``), which keeps the drift of a round trip's time
out of the ratios. After its operations each variant's reader collects twice:
the first collection folds what the operations buffered (the timing samples
go into the histograms there); then the same operations run on a pool or
client nobody instruments, and the second collection has nothing new to fold
but finds the caches as cold as the first did: what every collection costs
whatever the traffic (the SDK exporting each observable series, the pool
reads). Figures per variant, each the median over rounds of a ratio or
difference to ``bare`` in the same round (for the interleaved rows, whose
rounds put every variant on every pool or client alike, the ratio of sums
over all rounds and the mean difference):

- ``per op``: (operations + first collection - second collection) / n, the
  cost of an operation including its share of the deferred work, against
  which the targets are set. Folding a batch also has a part that does not
  grow with the batch (its code and the histograms' state, cold once per
  collection: about 170 µs for a redis-py pool's two histograms), which n
  spreads: at 200 commands per collection it came to 0.85 µs a command, at
  2,000 to 0.09 µs. An exporter collects every 10-60 s, thousands of
  operations apart wherever an overhead per operation matters, so n is
  10,000 cycles and 2,000 commands (``BENCH_CYCLES``, ``BENCH_COMMANDS``);
- ``1 collection/round``: (operations + first collection) / n, a collection
  every ``CYCLES``/``COMMANDS``/``REQUESTS`` operations (milliseconds apart;
  an exporter collects every 10-60 s), as earlier runs reported it;
- ``collection``: the second collection's time, in microseconds;
- ``CPU extra``: ``per op`` over bare's in this thread's CPU time
  (``time.thread_time``), and ``implied``, 1 + that over bare's time per op:
  the ratio the added work makes when nothing else moves (the package adds
  work in the calling thread, never a wait).

    python -m benchmarks pool_kinds     # BACKPRESSURE_TEST_POSTGRES_URL / _REDIS_URL or defaults
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, NamedTuple, TypeVar

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import otel_backpressure
from benchmarks._redis_server import free_port

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "41"))
CYCLES = int(os.environ.get("BENCH_CYCLES", "10000"))
COMMANDS = int(os.environ.get("BENCH_COMMANDS", "2000"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100"))
#: ``bare, again``: a second bare run of the same pools, never instrumented: the A/A
#: control, whose ratio to ``bare`` shows how far the method itself moves a row.
VARIANTS = ("bare", "bare, again", "ours", "ours, timings off", "contrib")
#: psycopg_pool and redis-py also run ``floor``: see ``_floor``.
POOL_VARIANTS = (*VARIANTS, "floor")
#: Pools or clients shared by the variants that are not ``contrib``: one per rotated
#: variant (bare, bare again, ours, ours with timings off) and a spare nobody times.
LANES = 5

Work = Callable[[int], None]


def _postgres() -> str:
    return os.environ.get(
        "BACKPRESSURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )


def _redis() -> str:
    return os.environ.get("BACKPRESSURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _nothing() -> None:
    pass


class Variant:
    """One variant: its reader, the pool or client it runs on, its workloads.

    ``enter()`` is called before each of the variant's timed blocks and returns
    what undoes it, called after: the variants of this package instrument
    ``target`` for that block only. ``bare``, ``bare, again``, ``ours``,
    ``ours, timings off`` (and ``floor``) share their pools or clients
    (``lanes``): the cycles run all of them on the first, and the commands
    rotate them over the lanes round by round, so that no variant keeps the
    server processes (and their places on the two cores) of one pool for a
    whole run, which moved a command row by up to ±10% when each variant had a
    pool of its own. The last lane is the spare: no variant is timed on it,
    and the untimed operations between two collections run there (see
    ``_pollution``).
    """

    __slots__ = ("cycle", "enter", "name", "one", "reader", "request", "target")

    def __init__(self, name: str, reader: InMemoryMetricReader, target: Any) -> None:
        self.name = name
        self.reader = reader
        self.target = target
        self.cycle: Work | None = None
        self.request: Work = lambda n: None
        self.one: Callable[[], None] | None = None  # one command or request, sync clients
        self.enter: Callable[[], Callable[[], None]] = lambda: _nothing


def _providers() -> tuple[MeterProvider, TracerProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), TracerProvider(), reader


def _placed(
    name: str,
    reader: InMemoryMetricReader,
    lanes: list[Any],
    new: Callable[[], Any],
    contrib: Callable[[Any], object] = lambda target: None,
    count: int = LANES,
) -> Variant:
    """``contrib`` on a pool or client of its own (``new()``, then ``contrib(it)``), any
    other variant on the shared ``lanes`` (``count`` of them, made with ``new()`` by the
    first)."""
    if name == "contrib":
        target = new()
        contrib(target)
        return Variant(name, reader, target)
    while len(lanes) < count:
        lanes.append(new())
    return Variant(name, reader, lanes[0])


def _ours(variant: Variant, provider: MeterProvider) -> None:
    """Make ``variant`` (if one of this package's) instrument its target for each block."""
    if variant.name.startswith("ours"):
        timings = variant.name == "ours"

        def enter() -> Callable[[], None]:
            target: Any = variant.target
            handle = otel_backpressure.instrument(target, meter_provider=provider, timings=timings)
            undo: Callable[[], None] = handle.uninstrument
            return undo

        variant.enter = enter


def _floor(variant: Variant, pool_of: Callable[[Any], Any], acquire: str, give_back: str) -> None:
    """The least any wait and use timing costs: two hooks, three clock reads, a stamp.

    The checkout and checkin are shadowed on the instance as this package
    shadows them (psycopg_pool's ``getconn`` with its own signature, redis-py's
    ``get_connection`` taking anything), and do only what any per-checkout
    wait time and use time needs: read the clock before and after the
    checkout and stamp the connection, read the clock at checkin. The
    durations are left on the connection, never recorded: a lower bound on the
    ``ours`` row of a bare cycle, not something a user could run.
    """
    if variant.name != "floor":
        return
    clock = time.perf_counter

    def enter() -> Callable[[], None]:
        pool = pool_of(variant.target)
        take, give = getattr(pool, acquire), getattr(pool, give_back)
        checkout: Callable[..., Any]
        if acquire == "getconn":

            def checkout(timeout: float | None = None) -> Any:
                start = clock()
                connection = take(timeout)
                connection.floor_out = now = clock()
                connection.floor_wait = now - start
                return connection

        else:

            def checkout(*args: Any, **kwargs: Any) -> Any:
                start = clock()
                connection = take(*args, **kwargs) if args or kwargs else take()
                connection.floor_out = now = clock()
                connection.floor_wait = now - start
                return connection

        def checkin(connection: Any) -> Any:
            connection.floor_use = clock() - connection.floor_out
            return give(connection)

        setattr(pool, acquire, checkout)
        setattr(pool, give_back, checkin)

        def leave() -> None:
            delattr(pool, acquire)
            delattr(pool, give_back)

        return leave

    variant.enter = enter


def psycopg_variant(stack: ExitStack, name: str, lanes: list[Any]) -> Variant:
    import psycopg_pool
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    meters, tracers, reader = _providers()

    def configure(connection: Any) -> None:
        PsycopgInstrumentor().instrument_connection(connection, tracer_provider=tracers)

    def new_pool(contrib: bool) -> Any:
        pool = psycopg_pool.ConnectionPool(
            _postgres(), min_size=4, max_size=4, configure=configure if contrib else None, open=True
        )
        stack.callback(pool.close)
        pool.wait()
        return pool

    variant = _placed(name, reader, lanes, lambda: new_pool(contrib=name == "contrib"))
    _ours(variant, meters)
    _floor(variant, lambda pool: pool, "getconn", "putconn")

    def cycle(n: int) -> None:
        pool = variant.target
        getconn, putconn = pool.getconn, pool.putconn
        for _ in range(n):
            putconn(getconn())

    def one() -> None:
        with variant.target.connection() as connection:
            connection.execute("SELECT 1").fetchone()

    def request(n: int) -> None:
        for _ in range(n):
            one()

    variant.cycle, variant.request, variant.one = cycle, request, one
    return variant


def redis_variant(stack: ExitStack, name: str, lanes: list[Any]) -> Variant:
    import redis
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    meters, tracers, reader = _providers()

    def new_client() -> Any:
        client = redis.Redis.from_url(_redis(), max_connections=4)
        stack.callback(client.close)
        return client

    def contrib(client: Any) -> None:
        RedisInstrumentor.instrument_client(client, tracer_provider=tracers)
        stack.callback(RedisInstrumentor.uninstrument_client, client)

    variant = _placed(name, reader, lanes, new_client, contrib)
    _ours(variant, meters)
    _floor(variant, lambda client: client.connection_pool, "get_connection", "release")

    def cycle(n: int) -> None:
        pool = variant.target.connection_pool
        for _ in range(n):
            pool.release(pool.get_connection())

    def one() -> None:
        variant.target.ping()

    def request(n: int) -> None:
        ping = variant.target.ping
        for _ in range(n):
            ping()

    variant.cycle, variant.request, variant.one = cycle, request, one
    return variant


def httpx_variant(stack: ExitStack, name: str, url: str, lanes: list[Any]) -> Variant:
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    meters, tracers, reader = _providers()

    def new_client() -> Any:
        client = httpx.Client(limits=httpx.Limits(max_connections=4))
        stack.callback(client.close)
        return client

    def contrib(client: Any) -> None:
        HTTPXClientInstrumentor.instrument_client(
            client, tracer_provider=tracers, meter_provider=meters
        )

    variant = _placed(name, reader, lanes, new_client, contrib)
    _ours(variant, meters)

    def one() -> None:
        variant.target.get(url)

    def request(n: int) -> None:
        get = variant.target.get
        for _ in range(n):
            get(url)

    variant.request, variant.one = request, one
    return variant


def aiohttp_variant(
    stack: ExitStack,
    name: str,
    url: str,
    loop: asyncio.AbstractEventLoop,
    lanes: list[Any],
) -> Variant:
    import aiohttp
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    meters, tracers, reader = _providers()

    async def make() -> aiohttp.ClientSession:
        configs = []
        if name == "contrib":
            configs.append(create_trace_config(tracer_provider=tracers, meter_provider=meters))
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4), trace_configs=configs)

    def new_session() -> Any:
        session = loop.run_until_complete(make())
        stack.callback(loop.run_until_complete, session.close())
        return session

    variant = _placed(name, reader, lanes, new_session, count=2)
    _ours(variant, meters)

    async def requests(n: int) -> None:
        get = variant.target.get
        for _ in range(n):
            async with get(url) as response:
                await response.read()

    variant.request = lambda n: loop.run_until_complete(requests(n))
    return variant


class Timing(NamedTuple):
    """One variant's round: seconds per operation, and one collection's seconds."""

    per_op: float  # operations + what the first collection folded, per operation
    all_in: float  # operations + the whole first collection, per operation
    collection: float  # the second collection: nothing new to fold, caches as cold
    cpu_per_op: float  # per_op in this thread's CPU time


def _timed(variant: Variant, work: Work, n: int, pollute: Work) -> Timing:
    leave = variant.enter()
    try:
        return _timed_block(variant.reader.get_metrics_data, work, n, pollute)
    finally:
        leave()


def _timed_block(collect: Callable[[], object], work: Work, n: int, pollute: Work) -> Timing:
    """One variant's block: ``n`` operations, then two collections, both after ``pollute``
    has run the same operations uninstrumented (see ``_pollution``)."""
    # Untimed, a few operations first: the variant timed before this one (and its
    # collections) left the caches full of its own code, which would otherwise
    # be charged to whichever variant follows it. Their timings are folded by
    # the timed collection: charged to the n operations (5% more values than
    # they buffered, against this package).
    clock, cpu = time.perf_counter, time.thread_time
    collect()
    work(max(1, n // 20))
    cpu_start, start = cpu(), clock()
    work(n)
    collect()  # folds what the operations buffered
    first, cpu_first = clock(), cpu()
    pollute(_pollution(n))
    cpu_second_start, second_start = cpu(), clock()
    collect()  # nothing new to fold: what any collection costs
    fixed, cpu_fixed = clock() - second_start, cpu() - cpu_second_start
    return Timing(
        (first - start - fixed) / n,
        (first - start) / n,
        fixed,
        (cpu_first - cpu_start - cpu_fixed) / n,
    )


def _pollution(n: int) -> int:
    """How many uninstrumented operations run between a variant's two collections.

    A collection right after another finds the SDK's code and data in the
    caches and took half the time of one after the operations (redis-py, 200
    ``PING``: 450 against 210 µs with timings off, which fold nothing), so
    ``first - second`` charged about 1.2 µs of cold caches to every command.
    The same operations on a pool or client nobody instruments leave the caches
    as the variant's own operations left them, and buffer nothing.
    """
    return max(10, n // 10)


class Row(NamedTuple):
    workload: str
    variant: str
    ratio: float  # per op, to bare
    extra_us: float  # per op, over bare
    all_in: float  # with one collection per round, to bare
    collection_us: float
    bare_us: float
    cpu_extra_us: float  # per op, over bare, in this thread's CPU time
    implied: float  # 1 + cpu_extra_us / bare_us: the ratio the added CPU makes of bare's time


_T = TypeVar("_T")


def _shuffled(items: list[_T], seed: int) -> list[_T]:
    """``items`` in an order drawn anew for each ``seed`` (repeatable from run to run).

    Not rotated: a rotation keeps every variant after the same one, and the
    variant after ``contrib`` (its spans' garbage, its caches) came out 2-3%
    slower in every run, making the others look faster than ``bare``.
    """
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def _measure(label: str, variants: list[Variant], pick: str, n: int, spare: Any) -> list[Row]:
    """Cycle rows (and aiohttp's): each variant times a block of ``n`` in turn, shuffled.

    ``spare`` is a pool or client no variant instruments, for ``bare``'s operations
    between two collections (see ``_pollution``).
    """
    works = {v.name: getattr(v, pick) for v in variants}
    bare = next(v for v in variants if v.name == "bare")
    pollute = _on(bare, spare, pick)
    for variant in variants:  # warm: connections open, caches filled
        leave = variant.enter()
        try:
            works[variant.name](max(10, n // 10))
            variant.reader.get_metrics_data()
        finally:
            leave()
    totals: dict[str, list[Timing]] = {v.name: [] for v in variants}
    for round_ in range(ROUNDS):
        _settle()
        for v in _shuffled(variants, round_):
            totals[v.name].append(_timed(v, works[v.name], n, pollute))
    return _rows(label, totals)


def _lanes(round_: int, count: int) -> list[int]:
    """Which lane each of ``count`` rotating variants runs on in ``round_``.

    Every ``count`` rounds make a Latin square, every variant once on every
    lane, its rows and columns shuffled anew per block: which variant takes
    over which one's lane changes from block to block. (A fixed rotation gave
    each variant the lane another had used the round before, always the same
    one, and what a lane's server processes carried over became one variant's
    bias rather than noise.)
    """
    block, step = divmod(round_, count)
    draw = random.Random(block)
    shifts, columns = list(range(count)), list(range(count))
    draw.shuffle(shifts)
    draw.shuffle(columns)
    return [columns[(index + shifts[step]) % count] for index in range(count)]


def _settle() -> None:
    """Start a round with nothing for the garbage collector to scan but the round's own.

    A full collection walks every object alive, here mostly the run's set-up
    (five SDK providers per library, pools, clients): 31 ms once, charged to
    whichever operation set it off. Landing at random on one variant's few
    hundred milliseconds of a round, such pauses moved the A/A control
    (``bare, again``) to 0.86-0.92 of ``bare`` on the httpx and ``PING`` rows.
    Collected and frozen at each round's start, what is alive stays out of
    every later collection, which then scans only what the variants allocate:
    their own collector cost, still charged to them.
    """
    gc.collect()
    gc.freeze()


def _on(variant: Variant, target: Any, pick: str) -> Work:
    """``variant``'s ``pick`` workload run on ``target`` instead of its own."""

    def work(n: int) -> None:
        own, variant.target = variant.target, target
        try:
            getattr(variant, pick)(n)
        finally:
            variant.target = own

    return work


def _rows(label: str, totals: dict[str, list[Timing]], *, pooled: bool = False) -> list[Row]:
    """Each variant's medians over rounds of its ratio to ``bare`` in the same round.

    ``pooled``: the ratio of the variant's sums over all rounds to ``bare``'s
    instead (the medians of a difference likewise become means), for rounds
    that visit every lane equally often, so that what a lane's server
    processes add or take away (up to ±10% a round for PostgreSQL) cancels.
    """
    bare = totals["bare"]
    median = statistics.median
    mean = statistics.fmean
    bare_us = median(base.per_op for base in bare) * 1e6
    rows = []
    for name, timings in totals.items():
        pairs = list(zip(timings, bare, strict=True))
        middle = mean if pooled else median
        if pooled:
            ratio = sum(t.per_op for t in timings) / sum(t.per_op for t in bare)
            all_in = sum(t.all_in for t in timings) / sum(t.all_in for t in bare)
        else:
            ratio = median(mine.per_op / base.per_op for mine, base in pairs)
            all_in = median(mine.all_in / base.all_in for mine, base in pairs)
        cpu_extra_us = middle(mine.cpu_per_op - base.cpu_per_op for mine, base in pairs) * 1e6
        rows.append(
            Row(
                label,
                name,
                ratio,
                middle(mine.per_op - base.per_op for mine, base in pairs) * 1e6,
                all_in,
                median(mine.collection for mine in timings) * 1e6,
                bare_us,
                cpu_extra_us,
                1 + cpu_extra_us / bare_us,
            )
        )
    return rows


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


def _interleaved(label: str, variants: list[Variant], lanes: list[Any], n: int) -> list[Row]:
    """Command rows: the variants' commands alternate one by one, each timed alone.

    A command is a round trip to a server process sharing the two busy cores,
    and its time drifts over milliseconds with whatever else runs: timed in
    blocks, one variant after another, that drift decided the ratio. Here the
    i-th command of every variant runs back to back (in an order shuffled
    anew each time), so drift reaches all of them alike; each is timed by
    itself (two clock reads, well under 0.1% of a command, alike for all). The
    pools or clients rotate over the variants round by round (see
    ``Variant``). Each round then collects every variant as ``_timed`` does,
    commands on the spare lane running between the two collections (per op:
    commands + first collection - second collection, over n). The rounds are
    a multiple of the lanes, and the ratios pooled over them (see ``_rows``).

    The untimed commands that open a round are interleaved the same way, and
    the variants collect in a shuffled order: warmed one variant after
    another in a fixed order, the first variant's lane ran its commands in
    about 155 µs where the others took 270 (the PostgreSQL backends' places
    on the two cores follow how they were woken), and ``bare``, first in the
    list, read 1.08 below its own A/A control.

    The spare is a lane of its own: run on ``bare``'s lane, those commands
    (a tenth of a round's, five times over) slowed whichever variant had that
    lane in the next round, by 10-15% with psycopg_pool, where the rotation
    always put ``ours, timings off``: it read 1.11 with nothing instrumented
    at all, and the A/A control 1.00.
    """
    playing = [v for v in variants if v.name in VARIANTS]  # floor: cycles only
    rotating = [v for v in playing if v.name != "contrib"]
    for variant in variants:  # warm: connections open, caches filled
        leave = variant.enter()
        try:
            variant.request(max(10, n // 10))
            variant.reader.get_metrics_data()
        finally:
            leave()
    clock, cpu = time.perf_counter, time.thread_time
    totals: dict[str, list[Timing]] = {v.name: [] for v in playing}
    *lanes, spare = lanes
    pollute = _on(next(v for v in playing if v.name == "bare"), spare, "request")
    rounds = -(-ROUNDS // len(lanes)) * len(lanes)  # every variant on every lane alike
    for round_ in range(rounds):
        _settle()
        for variant, lane in zip(rotating, _lanes(round_, len(lanes)), strict=True):
            variant.target = lanes[lane]
        with ExitStack() as entered:
            for variant in playing:
                entered.callback(variant.enter())
            ones = [(v.name, v.one) for v in playing if v.one is not None]
            for variant in _shuffled(playing, -round_ - 1):
                variant.reader.get_metrics_data()
            for i in range(max(1, n // 20)):  # untimed, interleaved as the timed ones
                for _, one in _shuffled(ones, -(round_ * n + i) - 1):
                    one()
            spent = dict.fromkeys(totals, 0.0)
            used = dict.fromkeys(totals, 0.0)
            for i in range(n):
                for name, one in _shuffled(ones, round_ * n + i):
                    cpu_start, start = cpu(), clock()
                    one()
                    spent[name] += clock() - start
                    used[name] += cpu() - cpu_start
            for variant in _shuffled(playing, round_):
                cpu_start, start = cpu(), clock()
                variant.reader.get_metrics_data()  # folds what the commands buffered
                first, cpu_first = clock(), cpu()
                pollute(_pollution(n))
                cpu_second, second = cpu(), clock()
                variant.reader.get_metrics_data()  # nothing new to fold
                fixed, cpu_fixed = clock() - second, cpu() - cpu_second
                worked = spent[variant.name] + first - start
                totals[variant.name].append(
                    Timing(
                        (worked - fixed) / n,
                        worked / n,
                        fixed,
                        (used[variant.name] + cpu_first - cpu_start - cpu_fixed) / n,
                    )
                )
    for variant in rotating:
        variant.target = lanes[0]
    return _rows(label, totals, pooled=True)


def run() -> list[Row]:
    rows: list[Row] = []
    with ExitStack() as stack:
        stack.callback(gc.unfreeze)
        lanes: list[Any] = []
        psycopg = [psycopg_variant(stack, name, lanes) for name in POOL_VARIANTS]
        rows += _measure("psycopg_pool checkout/checkin", psycopg, "cycle", CYCLES, lanes[-1])
        rows += _interleaved("psycopg_pool + SELECT 1", psycopg, lanes, COMMANDS)
        lanes = []
        redis = [redis_variant(stack, name, lanes) for name in POOL_VARIANTS]
        rows += _measure("redis-py checkout/checkin", redis, "cycle", CYCLES, lanes[-1])
        rows += _interleaved("redis-py + PING", redis, lanes, COMMANDS)
        process, url = _server()
        stack.callback(process.wait, 10)
        stack.callback(process.terminate)
        lanes = []
        httpx = [httpx_variant(stack, name, url, lanes) for name in VARIANTS]
        rows += _interleaved("httpx GET", httpx, lanes, REQUESTS)
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        lanes = []
        aiohttp = [aiohttp_variant(stack, name, url, loop, lanes) for name in VARIANTS]
        rows += _measure("aiohttp GET", aiohttp, "request", REQUESTS, lanes[-1])
    return rows


def main() -> None:
    rows = run()
    print(
        f"{ROUNDS} rounds per workload ({CYCLES} cycles, {COMMANDS} commands, "
        f"{REQUESTS} requests per variant per round); medians of per-round ratios"
    )
    print(
        f"{'workload':<32}{'variant':<20}{'per op':>8}{'extra us/op':>13}"
        f"{'1 collection/round':>20}{'collection us':>15}{'CPU extra us':>14}{'implied':>9}"
    )
    for row in rows:
        suffix = f"   (bare: {row.bare_us:.1f} us/op)" if row.variant == "bare" else ""
        print(
            f"{row.workload:<32}{row.variant:<20}{row.ratio:>8.3f}{row.extra_us:>13.2f}"
            f"{row.all_in:>20.3f}{row.collection_us:>15.0f}{row.cpu_extra_us:>14.2f}"
            f"{row.implied:>9.3f}{suffix}"
        )


if __name__ == "__main__":
    main()
