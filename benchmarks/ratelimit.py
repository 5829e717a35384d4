"""Rate-limit decisions: ours (GCRA, metered) against the ``limits`` library, side by side.

In memory, per decision, with our metering on: ``RateLimiter.hit_sync``
against ``limits``' FixedWindow, MovingWindow and SlidingWindowCounter on
``MemoryStorage`` (unmetered: ``limits`` has no metrics); ours both with keys
idle on arrival and with keys that hold a TAT in the future. On Redis:
``benchmarks/redis_store.py``.

Every contender runs in the same process, interleaved round by round (the
order rotated every round); the tables show medians over the rounds and
ratios to the anchor.

Run: ``python -m benchmarks ratelimit``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_backpressure.ratelimit import MemoryStore, Policy, RateLimiter

# many short rounds, rotated, so bursts of load on a shared machine hit every contender
ROUNDS = 21
DECISIONS = 5_000
KEYS = [f"client-{i}" for i in range(1_000)]


def _memory_contenders() -> dict[str, Callable[[], None]]:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    ours = RateLimiter(
        [Policy("bench", rate=10**6, period=1)],
        store=MemoryStore(max_keys=10_000),
        meter_provider=provider,
    )
    ours_two = RateLimiter(
        [Policy("bench-s", rate=10**6, period=1), Policy("bench-m", rate=10**7, period=60)],
        store=MemoryStore(max_keys=10_000),
        meter_provider=provider,
    )
    # the same with every key holding a TAT in the future (a 10 ms interval,
    # each key seen every ~millisecond) and a burst far above the load: keys
    # of clients spending their burst, where the rows above arrive idle
    held = Policy("bench-held", rate=100, period=1, burst=10**9)
    ours_held = RateLimiter([held], store=MemoryStore(max_keys=10_000), meter_provider=provider)
    ours_two_held = RateLimiter(
        [held, Policy("bench-held-m", rate=6_000, period=60, burst=10**9)],
        store=MemoryStore(max_keys=10_000),
        meter_provider=provider,
    )
    item = parse("1000000/second")
    fixed = FixedWindowRateLimiter(MemoryStorage())
    moving = MovingWindowRateLimiter(MemoryStorage())
    sliding = SlidingWindowCounterRateLimiter(MemoryStorage())

    def run(hit: Callable[[str], object]) -> Callable[[], None]:
        def loop() -> None:
            keys = KEYS
            for i in range(DECISIONS):
                hit(keys[i % 1000])

        return loop

    return {
        "limits FixedWindow (anchor)": run(lambda key: fixed.hit(item, key)),
        "limits MovingWindow": run(lambda key: moving.hit(item, key)),
        "limits SlidingWindowCounter": run(lambda key: sliding.hit(item, key)),
        "ours hit_sync, 1 policy, metered": run(ours.hit_sync),
        "ours hit_sync, 2 policies, metered": run(ours_two.hit_sync),
        "ours hit_sync, 1 policy, held keys": run(ours_held.hit_sync),
        "ours hit_sync, 2 policies, held keys": run(ours_two_held.hit_sync),
    }


def _calibrated_loop_overhead() -> float:
    """Seconds per iteration of the driving loop itself, subtracted from every row."""
    keys = KEYS

    def nothing(key: str) -> None:
        return None

    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for i in range(DECISIONS):
            nothing(keys[i % 1000])
        samples.append((time.perf_counter() - start) / DECISIONS)
    return statistics.median(samples)


def memory_table() -> list[tuple[str, float, float]]:
    contenders = _memory_contenders()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    overhead = _calibrated_loop_overhead()
    names = list(contenders)
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            loop = contenders[name]
            start = time.perf_counter()
            loop()
            samples[name].append((time.perf_counter() - start) / DECISIONS - overhead)
    anchor = statistics.median(samples["limits FixedWindow (anchor)"])
    return [
        (name, statistics.median(values) * 1e6, statistics.median(values) / anchor)
        for name, values in samples.items()
    ]


def main() -> None:
    print(
        "In memory, per decision (median of rounds; ratio to limits FixedWindow; lower is better)"
    )
    print(f"{'contender':<40} {'us/decision':>12} {'ratio':>8}")
    for name, micros, ratio in memory_table():
        print(f"{name:<40} {micros:>12.2f} {ratio:>8.2f}")


if __name__ == "__main__":
    main()
