"""Rate-limit decisions on Redis: ``RedisStore`` against every ``limits`` strategy, one run.

Every contender runs on the same private ``redis-server`` (so ``INFO`` reads
only this benchmark's work), with redis-py's asyncio client underneath:
``await RateLimiter.hit`` on a metered ``RedisStore`` against ``limits``'
async FixedWindow, MovingWindow and SlidingWindowCounter on
``async+redis://`` (``implementation="redispy"``). Three rows per contender:

- decisions per second, one at a time (each decision awaited before the next);
- decisions per second, 32 at once (32 tasks, each deciding in a loop);
- Redis server CPU per decision (``INFO cpu``: user + system, over the
  32-at-once runs; over the one-at-a-time runs beside it), with the scripts'
  ``usec_per_call`` and the script calls per decision from ``INFO
  commandstats``.

Rounds are interleaved and their order rotated, so load bursts on a shared
machine hit every contender; the tables show medians over the rounds and
ratios to FixedWindow. Two breakdowns follow: the client CPU of one decision
layer by layer, and the server's time per script call piece by piece.

Run: ``python -m benchmarks redis_store``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import limits
import redis
from limits import parse
from limits.aio import strategies
from limits.storage import storage_from_string
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from benchmarks._redis_server import private_server
from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore
from otel_backpressure.ratelimit.redis import _load_script, _one_verdict

ROUNDS = 7
DECISIONS = {1: 1_500, 32: 6_400}
KEYS = [f"client-{i}" for i in range(1_000)]
ANCHOR = "limits FixedWindow"


@dataclass
class Samples:
    rates: dict[int, list[float]] = field(default_factory=lambda: {1: [], 32: []})
    # server CPU per decision, and the scripts' usec_per_call, by concurrency
    cpu_us: dict[int, list[float]] = field(default_factory=lambda: {1: [], 32: []})
    script_us: dict[int, list[float]] = field(default_factory=lambda: {1: [], 32: []})
    # script calls per decision, 32 at once
    calls: list[float] = field(default_factory=list)


@dataclass
class Row:
    name: str
    rate: dict[int, float]  # decisions per second
    ratio: dict[int, float]  # to FixedWindow's
    cpu_us: dict[int, float]  # server CPU per decision
    cpu_ratio: dict[int, float]
    script_us: dict[int, float]
    calls: float


def _server_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _contenders(url: str) -> tuple[dict[str, Callable[[str], Awaitable[object]]], RedisStore]:
    store = RedisStore(url, prefix="bench:ours:", timeout=2.0)
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    ours = RateLimiter(
        [Policy("bench", rate=10**6, period=1)], store=store, meter_provider=provider
    )
    item = parse("1000000/second")

    def storage(name: str) -> Any:
        return storage_from_string(
            "async+" + url, implementation="redispy", key_prefix=f"bench-{name}"
        )

    fixed = strategies.FixedWindowRateLimiter(storage("fixed"))
    moving = strategies.MovingWindowRateLimiter(storage("moving"))
    sliding = strategies.SlidingWindowCounterRateLimiter(storage("sliding"))
    return {
        ANCHOR: lambda key: fixed.hit(item, key),
        "limits MovingWindow": lambda key: moving.hit(item, key),
        "limits SlidingWindowCounter": lambda key: sliding.hit(item, key),
        "ours RedisStore, metered": ours.hit,
    }, store


async def _run(hit: Callable[[str], Awaitable[object]], concurrency: int) -> float:
    total = DECISIONS[concurrency]

    async def worker(offset: int) -> None:
        for i in range(offset, total, concurrency):
            await hit(KEYS[i % 1000])

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return total / (time.perf_counter() - start)


async def _measure(url: str) -> dict[str, Samples]:
    hits, store = _contenders(url)
    server = redis.Redis.from_url(url)
    samples = {name: Samples() for name in hits}
    names = list(hits)
    for name in names:  # warm up: connections, scripts loaded
        await _run(hits[name], 32)
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            for concurrency in (1, 32):
                server.config_resetstat()
                before = _server_cpu(server.info("cpu"))
                samples[name].rates[concurrency].append(await _run(hits[name], concurrency))
                cpu = _server_cpu(server.info("cpu")) - before
                stats = server.info("commandstats")
                scripts = [v for k, v in stats.items() if k.startswith("cmdstat_eval")]
                calls = sum(int(v["calls"]) for v in scripts)
                usec = sum(float(v["usec"]) for v in scripts)
                samples[name].cpu_us[concurrency].append(cpu * 1e6 / DECISIONS[concurrency])
                samples[name].script_us[concurrency].append(usec / max(calls, 1))
                if concurrency == 32:
                    samples[name].calls.append(calls / DECISIONS[32])
    await store.aclose()
    server.close()
    return samples


def table() -> list[Row]:
    with private_server() as server:
        samples = asyncio.run(_measure(server.url))
    median = statistics.median
    anchor = samples[ANCHOR]
    return [
        Row(
            name,
            {n: median(s.rates[n]) for n in (1, 32)},
            {n: median(s.rates[n]) / median(anchor.rates[n]) for n in (1, 32)},
            {n: median(s.cpu_us[n]) for n in (1, 32)},
            {n: median(s.cpu_us[n]) / median(anchor.cpu_us[n]) for n in (1, 32)},
            {n: median(s.script_us[n]) for n in (1, 32)},
            median(s.calls),
        )
        for name, s in samples.items()
    ]


def _per_call_us(call: Callable[[], object], number: int = 20_000) -> float:
    samples = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(number):
            call()
        samples.append((time.process_time() - start) / number * 1e6)
    return statistics.median(samples)


async def _loop_cpu_us(
    calls: dict[str, Callable[[], Awaitable[object]]], number: int = 1_000
) -> dict[str, float]:
    """Client CPU per awaited call, one at a time, rounds interleaved: process time."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS * 2):
        for name, call in calls.items():
            start = time.process_time()
            for _ in range(number):
                await call()
            samples[name].append((time.process_time() - start) / number * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


async def _client_breakdown(url: str) -> list[tuple[str, float]]:
    hits, store = _contenders(url)
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    policies = (Policy("bench", rate=10**6, period=1),)
    limiter = RateLimiter(policies, store=store, meter_provider=provider)
    await store.decide("client-1", policies, 1)  # the store's connection, the script loaded
    link = store._link
    assert link is not None
    prepared = store._prepared(policies)
    keys = store.keys("client-1", policies)
    argc, body = store._packed([(keys, b"1", prepared)])
    command = b"*%d\r\n%b%b" % (argc + 2, link._evalsha, body)
    args = [b"", b"1", *prepared.tail]
    reply = await link.script(argc, body)
    breaker = store.breaker

    def build() -> object:
        tagged = f"{store.prefix}{{client-1}}"
        return store._packed([([tagged + s for s in prepared.suffixes], b"1", prepared)])

    def admit() -> None:
        breaker.succeeded(breaker.admit())

    async def connection() -> object:
        await link.conn.send_packed_command(command, check_health=False)
        return await link.conn.read_response(disable_decoding=True)

    rows = [
        ("store: keys and the command's arguments, encoded", _per_call_us(build)),
        ("store: breaker (admit + outcome)", _per_call_us(admit)),
        ("store: reply parsing", _per_call_us(lambda: _one_verdict(reply))),
    ]
    totals = await _loop_cpu_us(
        {
            "redis-py's command path: the script through the client": lambda: store._script(
                keys, args
            ),
            "1. redis-py connection: send_packed_command + read_response": connection,
            "2. 1 + the store's deadline (one timer, re-armed)": lambda: link.script(argc, body),
            "3. store.decide: 2 + keys, arguments, breaker, parsing": lambda: store.decide(
                "client-1", policies, 1
            ),
            "4. ours: await limiter.hit: 3 + checks, metering": lambda: limiter.hit("client-1"),
            f"{ANCHOR}: await hit": lambda: hits[ANCHOR]("client-1"),
        }
    )
    rows += totals.items()
    await store.aclose()
    return rows


def _server_pieces(url: str, number: int = 4_000) -> list[tuple[str, float]]:
    """usec_per_call of one-decision script calls, pipelined (no round trip between)."""
    incr_expire = Path(limits.__file__).parent / "resources/redis/lua_scripts/incr_expire.lua"
    ours = [b"", 1, 1, 1, 10**6]  # server time, cost, one policy (1 us, burst 10**6)
    pieces = {
        "script: return 1 (1 key, 5 arguments)": ("return 1", ours),
        "script: TIME, return 1": ("local t = redis.call('TIME') return 1", ours),
        "script: GET, return 1": ("local v = redis.pcall('GET', KEYS[1]) return 1", ours),
        "script: SET value PX ms, return 1": (
            "redis.call('SET', KEYS[1], '1790000000000000', 'PX', '2') return 1",
            ours,
        ),
        "script: return string.format(reply)": (
            "return string.format('1 0 %d 0 %d', 999999, 1)",
            ours,
        ),
        "ours: gcra.lua, one decision": (_load_script(), ours),
        f"{ANCHOR}: incr_expire.lua": (incr_expire.read_text(), [1, 1]),
    }
    server = redis.Redis.from_url(url)
    samples: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(ROUNDS):
        for i, (name, (source, argv)) in enumerate(pieces.items()):
            sha = server.script_load(source)
            server.config_resetstat()
            pipe = server.pipeline(transaction=False)
            for n in range(number):
                pipe.evalsha(sha, 1, f"bench:piece{i}:{{{KEYS[n % 1000]}}}", *argv)
                if n % 200 == 199:
                    pipe.execute()
            pipe.execute()
            stats = server.info("commandstats")["cmdstat_evalsha"]
            samples[name].append(float(stats["usec_per_call"]))
    server.close()
    return [(name, statistics.median(values)) for name, values in samples.items()]


def main() -> None:
    print(
        f"Decisions per second (median of {ROUNDS} rounds; ratio to {ANCHOR}), Redis server "
        "CPU per decision (lower is better) and the scripts' usec_per_call, 1 and 32 at once"
    )
    print(
        f"{'contender':<28} {'1 at once':>9} {'ratio':>5} {'32 at once':>10} {'ratio':>5} "
        f"{'CPU us/dec 32':>13} {'ratio':>5} {'CPU us/dec 1':>12} {'ratio':>5} "
        f"{'script us 1':>11} {'script us 32':>12} {'calls/dec 32':>12}"
    )
    for row in table():
        print(
            f"{row.name:<28} {row.rate[1]:>9.0f} {row.ratio[1]:>5.2f} {row.rate[32]:>10.0f} "
            f"{row.ratio[32]:>5.2f} {row.cpu_us[32]:>13.2f} {row.cpu_ratio[32]:>5.2f} "
            f"{row.cpu_us[1]:>12.2f} {row.cpu_ratio[1]:>5.2f} {row.script_us[1]:>11.2f} "
            f"{row.script_us[32]:>12.2f} {row.calls:>12.3f}"
        )
    print()
    print(f"Client CPU per decision, one at a time (median of {ROUNDS * 2}; process time, us)")
    with private_server() as server:
        for name, micros in asyncio.run(_client_breakdown(server.url)):
            print(f"{name:<62} {micros:>8.2f}")
        print()
        print(f"Server time per script call, one decision a call, pipelined (median of {ROUNDS})")
        for name, micros in _server_pieces(server.url):
            print(f"{name:<62} {micros:>8.2f}")


if __name__ == "__main__":
    main()
