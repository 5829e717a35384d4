"""Rate-limit decisions on Redis: ``RedisStore`` against every ``limits`` strategy, one run.

Every contender runs on the same private ``redis-server`` (so ``INFO`` reads
only this benchmark's work), with the same redis-py asyncio client
underneath: ``await RateLimiter.hit`` on a metered ``RedisStore`` against
``limits``' async FixedWindow, MovingWindow and SlidingWindowCounter on
``async+redis://`` (``implementation="redispy"``). Three rows per contender:

- decisions per second, one at a time (each decision awaited before the next);
- decisions per second, 32 at once (32 tasks, each deciding in a loop);
- Redis server CPU per decision (``INFO cpu``: user + system, over the
  32-at-once runs), with the script's ``usec_per_call`` and the round trips
  per decision from ``INFO commandstats`` beside it.

Rounds are interleaved and their order rotated, so load bursts on a shared
machine hit every contender; the tables show medians over the rounds and
ratios to FixedWindow.

Run: ``python -m benchmarks redis_store``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from limits import parse
from limits.aio import strategies
from limits.storage import storage_from_string
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from benchmarks._redis_server import private_server
from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore

ROUNDS = 7
DECISIONS = {1: 1_500, 32: 6_400}
KEYS = [f"client-{i}" for i in range(1_000)]
ANCHOR = "limits FixedWindow"


@dataclass
class Samples:
    rates: dict[int, list[float]] = field(default_factory=lambda: {1: [], 32: []})
    cpu_us: list[float] = field(default_factory=list)
    script_us: list[float] = field(default_factory=list)
    calls: list[float] = field(default_factory=list)


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
            samples[name].rates[1].append(await _run(hits[name], 1))
            server.config_resetstat()
            before = _server_cpu(server.info("cpu"))
            samples[name].rates[32].append(await _run(hits[name], 32))
            cpu = _server_cpu(server.info("cpu")) - before
            stats = server.info("commandstats")
            scripts = [v for k, v in stats.items() if k.startswith("cmdstat_evalsha")]
            calls = sum(int(v["calls"]) for v in scripts)
            usec = sum(float(v["usec"]) for v in scripts)
            samples[name].cpu_us.append(cpu * 1e6 / DECISIONS[32])
            samples[name].script_us.append(usec / max(calls, 1))
            samples[name].calls.append(calls / DECISIONS[32])
    await store.aclose()
    server.close()
    return samples


def table() -> list[tuple[str, float, float, float, float, float, float, float, float]]:
    with private_server() as server:
        samples = asyncio.run(_measure(server.url))
    anchor = samples[ANCHOR]
    one_anchor = statistics.median(anchor.rates[1])
    many_anchor = statistics.median(anchor.rates[32])
    cpu_anchor = statistics.median(anchor.cpu_us)
    rows = []
    for name, s in samples.items():
        one, many, cpu = (
            statistics.median(s.rates[1]),
            statistics.median(s.rates[32]),
            statistics.median(s.cpu_us),
        )
        rows.append(
            (
                name,
                one,
                one / one_anchor,
                many,
                many / many_anchor,
                cpu,
                cpu / cpu_anchor,
                statistics.median(s.script_us),
                statistics.median(s.calls),
            )
        )
    return rows


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
    policy = Policy("bench", rate=10**6, period=1)
    limiter = RateLimiter([policy], store=store, meter_provider=provider)
    suffixes, tail = store._script_args((policy,))
    keys, args = [f"{store.prefix}{{client-1}}{suffixes[0]}"], [b"", 1, *tail]
    reply = await store._script(keys, args)
    breaker = store.breaker

    def build() -> object:
        tagged = f"{store.prefix}{{client-1}}"
        return [tagged + suffix for suffix in suffixes], [b"", 1, *tail]

    def admit() -> None:
        breaker.succeeded(breaker.admit())

    rows = [
        ("store: keys and script arguments", _per_call_us(build)),
        ("store: breaker", _per_call_us(admit)),
        ("store: reply parsing", _per_call_us(lambda: store_verdict(reply))),
    ]
    totals = await _loop_cpu_us(
        {
            "1. redis-py: the registered script's call (+ loop, syscalls)": lambda: store._script(
                keys, args
            ),
            "2. 1 + the store's deadline (asyncio.timeout)": lambda: store._call(keys, args),
            "3. store.decide: 2 + keys, breaker, parsing": lambda: store.decide(
                "client-1", (policy,), 1
            ),
            "4. ours: await limiter.hit: 3 + checks, metering": lambda: limiter.hit("client-1"),
            f"{ANCHOR}: await hit": lambda: hits[ANCHOR]("client-1"),
        }
    )
    rows += totals.items()
    await store.aclose()
    return rows


def store_verdict(reply: bytes) -> object:
    from otel_backpressure.ratelimit.redis import _verdict

    return _verdict([int(field) for field in reply.split()], 0)


def main() -> None:
    print(
        f"Decisions per second (median of {ROUNDS} rounds; ratio to {ANCHOR}) and Redis "
        "server CPU per decision at 32 at once (lower is better)"
    )
    print(
        f"{'contender':<30} {'1 at once':>10} {'ratio':>6} {'32 at once':>11} {'ratio':>6} "
        f"{'CPU us/dec':>11} {'ratio':>6} {'script us/call':>15} {'calls/dec':>10}"
    )
    for name, one, r1, many, r32, cpu, rc, script, calls in table():
        print(
            f"{name:<30} {one:>10.0f} {r1:>6.2f} {many:>11.0f} {r32:>6.2f} "
            f"{cpu:>11.2f} {rc:>6.2f} {script:>15.2f} {calls:>10.3f}"
        )
    print()
    print("Client CPU per decision, one at a time (median of 5; process time, us)")
    with private_server() as server:
        for name, micros in asyncio.run(_client_breakdown(server.url)):
            print(f"{name:<58} {micros:>8.2f}")


if __name__ == "__main__":
    main()
