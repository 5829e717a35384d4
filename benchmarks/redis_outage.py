"""How long rate limiting stays off after a Redis outage ends, and whether any request fails.

A ``RateLimiter`` on a ``RedisStore`` (defaults: ``timeout=0.25``,
``probe_interval=1.0``) on a private ``redis-server``, about 180 requests per
second, each request its own task (as a server's requests are). The one key
has a policy that Redis rejects after its first request, so every request
Redis decides is rejected and every request let through was failed open.
Outages: the server frozen (``SIGSTOP`` ... ``SIGCONT``) for 0.5 s, 2 s and
20 s, and the server stopped and started again (empty) on the same port.

For each run: *off after recovery* is from the moment the server answers a
``PING`` again to the end of the last request failed open (0 when none was
failed open after it answered); *failed* counts requests that raised (the
store must never raise); *flaps* counts requests failed open that ended
after the first request Redis decided again had ended; *opened* is the most
times the breaker opened in one run (one outage should open it once).
Median and worst over the runs.

Run: ``python -m benchmarks redis_outage`` (about two minutes).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import redis

from benchmarks._redis_server import Server, private_server
from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore

RATE = 180  # requests per second, as in the field report
BEFORE = 1.0  # seconds of traffic before the outage
AFTER = 3.0  # seconds of traffic after the server answers again
RUNS = 3
ONCE = Policy("once", rate=1, period=3600, burst=1)


@dataclass
class Run:
    answered_at: float = 0.0
    # (start, end, failed open) per request
    requests: list[tuple[float, float, bool]] = field(default_factory=list)
    failed: int = 0
    # times the breaker opened: one outage should be one
    opened: int = 0

    def off_after_recovery(self) -> float:
        ends = [end for _, end, open_ in self.requests if open_ and end > self.answered_at]
        return max(ends, default=self.answered_at) - self.answered_at

    def flaps(self) -> int:
        ends = [end for _, end, open_ in self.requests if not open_ and end >= self.answered_at]
        if not ends:
            return len(self.requests)
        first = min(ends)  # Redis decides again
        return sum(1 for _, end, open_ in self.requests if open_ and end > first)


def _wait_until_answering(port: int) -> float:
    client = redis.Redis(port=port, socket_timeout=0.05, socket_connect_timeout=0.05)
    while True:
        try:
            client.ping()
            client.close()
            return time.perf_counter()
        except redis.RedisError:
            time.sleep(0.002)


async def _traffic(limiter: RateLimiter, run: Run, until: asyncio.Event) -> None:
    async def one() -> None:
        start = time.perf_counter()
        try:
            decision = await limiter.hit("k")
        except Exception:
            run.failed += 1
            return
        # Redis answers this key with a rejection (or, right after a restart, one
        # allowance with a reset time); a fail-open verdict has neither
        failed_open = decision.allowed and decision.reset_after == 0
        run.requests.append((start, time.perf_counter(), failed_open))

    tasks: set[asyncio.Task[None]] = set()
    next_at = time.perf_counter()
    while not until.is_set():
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += 1 / RATE
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await asyncio.gather(*tasks)


async def _one_run(server: Server, outage: float | None) -> Run:
    store = RedisStore(server.url, prefix="outage:")
    limiter = RateLimiter([ONCE], store=store)
    await limiter.hit("k")  # the one allowance: from now on Redis rejects
    run = Run()
    stop = asyncio.Event()
    traffic = asyncio.create_task(_traffic(limiter, run, stop))
    await asyncio.sleep(BEFORE)
    if outage is None:  # stop, start empty on the same port
        server.stop()
        await asyncio.to_thread(server.start)
    else:
        server.pause()
        await asyncio.sleep(outage)
        server.resume()
    run.answered_at = await asyncio.to_thread(_wait_until_answering, server.port)
    await asyncio.sleep(AFTER)
    stop.set()
    await traffic
    run.opened = store.breaker.outages
    await store.aclose()
    await asyncio.to_thread(_flush, server.port)
    return run


def _flush(port: int) -> None:
    with redis.Redis(port=port) as client:
        client.flushall()


def table() -> list[tuple[str, float, float, int, int, int, int]]:
    rows = []
    for label, outage in (
        ("stall 0.5 s", 0.5),
        ("stall 2 s", 2.0),
        ("stall 20 s", 20.0),
        ("stop + start", None),
    ):
        runs = []
        with private_server() as server:
            for _ in range(RUNS):
                runs.append(asyncio.run(_one_run(server, outage)))
        offs = [run.off_after_recovery() for run in runs]
        rows.append(
            (
                label,
                statistics.median(offs),
                max(offs),
                sum(run.failed for run in runs),
                sum(run.flaps() for run in runs),
                sum(len(run.requests) for run in runs),
                max(run.opened for run in runs),
            )
        )
    return rows


def main() -> None:
    print(f"Rate limiting off after Redis answers again ({RUNS} runs each, ~{RATE} req/s)")
    print(
        f"{'outage':<14} {'off median s':>12} {'off worst s':>12} {'failed':>7} "
        f"{'flaps':>6} {'requests':>9} {'opened':>7}"
    )
    for label, median, worst, failed, flaps, total, opened in table():
        print(
            f"{label:<14} {median:>12.2f} {worst:>12.2f} {failed:>7} {flaps:>6} {total:>9} "
            f"{opened:>7}"
        )


if __name__ == "__main__":
    main()
