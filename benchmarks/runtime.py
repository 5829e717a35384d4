"""The runtime part's cost: a busy event loop and ``anyio.to_thread.run_sync``, bare vs measured.

Three measurements, side by side in one process:

- ``loop``: a loop running many small tasks and callbacks (``TASKS`` tasks that
  each yield ``STEPS`` times and schedule a ``call_soon`` callback every step),
  started with ``asyncio.run`` either bare or with the event-loop part on at
  the default resolution (``OTEL_PYTHON_BACKPRESSURE_EVENT_LOOP_RESOLUTION``,
  10 ms). Throughput ratio = bare time / measured time (1.0 = free).
- ``to_thread``: ``CALLS`` sequential ``anyio.to_thread.run_sync`` calls
  through anyio's default limiter, bare or with the thread-pool part on (the
  limiter read at collection, each call's wait timed). Ratio as above.
- ``idle CPU``: the process CPU time of a loop that only sleeps for
  ``IDLE_SECONDS``, bare, with a bare ``call_later`` timer at the same period
  (what any timer-based sampler pays to wake the loop), and with the monitor;
  reported as a share of one core.

Each pair runs in ABBA blocks (bare, measured, measured, bare) for ``ROUNDS``
rounds, the part switched with ``BackpressureInstrumentor`` outside the timed
region; each block gives one paired ratio, so drift on a shared machine
cancels; the table gives the median and interquartile range of the wall-time
ratio (throughput) and of the process CPU-time ratio (every thread's CPU:
the cost itself, less exposed to the scheduling noise of a shared machine). A null run puts
the bare arm on both sides: its spread is the method's noise.

Run: ``python -m benchmarks runtime``
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable

import anyio

from otel_backpressure import BackpressureInstrumentor, Settings
from otel_backpressure.testing import MetricsCapture

TASKS = 200
STEPS = 150
CALLS = 300
IDLE_SECONDS = 1.0
ROUNDS = 25
OFF = Settings(
    pool_enabled=False,
    rate_limit_enabled=False,
    errors_enabled=False,
    event_loop_enabled=False,
    thread_pool_enabled=False,
)
LOOP_ONLY = Settings(
    pool_enabled=False, rate_limit_enabled=False, errors_enabled=False, thread_pool_enabled=False
)
THREADS_ONLY = Settings(
    pool_enabled=False, rate_limit_enabled=False, errors_enabled=False, event_loop_enabled=False
)


async def _busy_loop() -> None:
    loop = asyncio.get_running_loop()
    done = [0]

    def callback() -> None:
        done[0] += 1

    async def task() -> None:
        for _ in range(STEPS):
            loop.call_soon(callback)
            await asyncio.sleep(0)

    await asyncio.gather(*(task() for _ in range(TASKS)))


async def _to_thread() -> None:
    def nothing() -> None:
        return None

    for _ in range(CALLS):
        await anyio.to_thread.run_sync(nothing)


def _timed(
    settings: Settings | None, capture: MetricsCapture, work: Callable[[], None]
) -> tuple[float, float]:
    """(wall, process CPU) seconds for ``work`` with the parts of ``settings`` on (None: bare)."""
    instrumentor = BackpressureInstrumentor()
    if settings is not None:
        instrumentor.instrument(meter_provider=capture.meter_provider, settings=settings)
    gc.collect()
    try:
        start, start_cpu = time.perf_counter(), time.process_time()
        work()
        return time.perf_counter() - start, time.process_time() - start_cpu
    finally:
        if settings is not None:
            instrumentor.uninstrument()
            capture.collect()  # what an exporter would do; keeps buffers empty


def _paired(
    bare: Settings | None, measured: Settings | None, work: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """ABBA ratios bare / measured of wall time and of CPU time (>1: measured was faster)."""
    capture = MetricsCapture()
    _timed(bare, capture, work)  # warm-up: imports, thread pools
    _timed(measured, capture, work)
    wall, cpu = [], []
    for _ in range(ROUNDS):
        a1 = _timed(bare, capture, work)
        b1 = _timed(measured, capture, work)
        b2 = _timed(measured, capture, work)
        a2 = _timed(bare, capture, work)
        wall.append((a1[0] + a2[0]) / (b1[0] + b2[0]))
        cpu.append((a1[1] + a2[1]) / (b1[1] + b2[1]))
    capture.shutdown()
    return wall, cpu


def _idle_cpu(settings: Settings | None, timer: float | None) -> float:
    """CPU seconds per wall second of a loop that sleeps (plus a bare timer if asked)."""
    capture = MetricsCapture()
    instrumentor = BackpressureInstrumentor()
    if settings is not None:
        instrumentor.instrument(meter_provider=capture.meter_provider, settings=settings)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        if timer is not None:

            def tick() -> None:
                loop.call_later(timer, tick)

            loop.call_later(timer, tick)
        start_cpu, start = time.process_time(), time.perf_counter()
        await asyncio.sleep(IDLE_SECONDS)
        return (time.process_time() - start_cpu) / (time.perf_counter() - start)

    try:
        return asyncio.run(main())
    finally:
        if settings is not None:
            instrumentor.uninstrument()
        capture.shutdown()


def _summary(ratios: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return f"{median:.3f} ({q1:.3f}-{q3:.3f})"


def main() -> None:
    resolution = Settings().event_loop_resolution
    print(f"rounds={ROUNDS} (ABBA blocks), default resolution {resolution * 1000:g} ms")

    def loop_work() -> None:
        asyncio.run(_busy_loop())

    def thread_work() -> None:
        asyncio.run(_to_thread())

    rows = [
        ("loop: tasks + callbacks", _paired(None, LOOP_ONLY, loop_work), ">= 0.99"),
        ("loop: null run (bare both sides)", _paired(None, None, loop_work), ""),
        ("to_thread.run_sync", _paired(None, THREADS_ONLY, thread_work), ">= 0.97"),
        ("to_thread: null run", _paired(None, None, thread_work), ""),
    ]
    print(
        "| case | throughput ratio (wall) bare/measured, median (IQR) | CPU-time ratio | target |"
    )
    print("|---|---|---|---|")
    for name, (wall, cpu), target in rows:
        print(f"| {name} | {_summary(wall)} | {_summary(cpu)} | {target} |")

    shares: dict[str, list[float]] = {"bare": [], "bare timer": [], "monitor": []}
    for _ in range(3):
        shares["bare"].append(_idle_cpu(None, None))
        shares["bare timer"].append(_idle_cpu(None, resolution))
        shares["monitor"].append(_idle_cpu(LOOP_ONLY, None))
    print("| idle loop, CPU share of one core (median of 3) | value |")
    print("|---|---|")
    for name, values in shares.items():
        print(f"| {name} | {statistics.median(values) * 100:.2f}% |")
    per_second = CALLS / statistics.median(
        [_timed(None, MetricsCapture(), thread_work)[0] for _ in range(3)]
    )
    print(f"bare to_thread.run_sync calls per second: {per_second:,.0f}")


if __name__ == "__main__":
    main()
