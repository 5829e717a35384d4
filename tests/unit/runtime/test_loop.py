"""The event-loop part against real asyncio loops started after instrumentation."""

from __future__ import annotations

import asyncio
import threading
import time
from bisect import bisect_left

import anyio

import contract
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.runtime import DELAY_BOUNDARIES, LOOP_NAME, MAX_LOOP_NAMES, MONITORS
from otel_backpressure.testing import MetricsCapture
from runtime_settings import RUNTIME_ONLY

DELAY = "backpressure.event_loop.delay"
UTILIZATION = "backpressure.event_loop.utilization"


def _series(metrics: MetricsCapture, name: str) -> dict[str, object]:
    metric = metrics.collect().get(name)
    if metric is None:
        return {}
    return {point.attributes[LOOP_NAME]: point for point in metric.data.data_points}


def _wait_for(condition: threading.Event) -> None:
    assert condition.wait(30), "the loop thread never got there"


def test_a_blocking_call_shows_in_the_delay_histogram_in_its_bucket(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    blocked: list[float] = []

    async def main() -> None:
        await asyncio.sleep(0)
        start = time.perf_counter()
        time.sleep(0.2)  # noqa: ASYNC251 - the blocking call under test
        blocked.append(time.perf_counter() - start)
        await asyncio.sleep(0)  # the sampler runs now, late

    asyncio.run(main())

    point = metrics.histogram(DELAY, {LOOP_NAME: "MainThread"})
    assert point is not None
    assert tuple(point.explicit_bounds) == DELAY_BOUNDARIES
    assert point.max >= blocked[0] >= 0.2
    # one sample holds the whole stall; it lands in the stall's own bucket
    big = bisect_left(DELAY_BOUNDARIES, 0.1) + 1
    assert sum(point.bucket_counts[big:]) == 1
    assert point.bucket_counts[bisect_left(DELAY_BOUNDARIES, blocked[0])] == 1
    assert all(not contract.violations(m) for m in metrics.collect().values())


def test_utilization_is_the_busy_share_since_the_previous_collection(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    readings: list[float] = []

    def utilization() -> float:
        point = _series(metrics, UTILIZATION)["MainThread"]
        return point.value  # type: ignore[attr-defined,no-any-return]

    async def main() -> None:
        time.sleep(0.3)  # noqa: ASYNC251 - busy the whole time
        readings.append(utilization())
        await asyncio.sleep(0.3)  # waiting in the selector the whole time
        readings.append(utilization())

    asyncio.run(main())
    busy, idle = readings
    assert 0.5 < busy <= 1.0
    assert 0.0 <= idle < 0.5
    assert _series(metrics, UTILIZATION) == {}  # the loop is over: its series stopped


def test_loops_in_two_threads_are_named_after_their_threads(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    running = [threading.Event(), threading.Event()]
    release = threading.Event()

    def run(index: int) -> None:
        async def main() -> None:
            await asyncio.sleep(0)
            running[index].set()
            await asyncio.to_thread(release.wait)

        asyncio.run(main())

    threads = [
        threading.Thread(target=run, args=(i,), name=f"loop-{i}", daemon=True) for i in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for event in running:
        _wait_for(event)
    assert set(_series(metrics, UTILIZATION)) == {"loop-0", "loop-1"}
    release.set()
    for thread in threads:
        thread.join(30)
    assert _series(metrics, UTILIZATION) == {}
    assert set(_series(metrics, DELAY)) <= {"loop-0", "loop-1"}


def test_loops_started_by_anyio_run_are_monitored(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    seen: list[set[str]] = []

    async def main() -> None:
        seen.append(set(_series(metrics, UTILIZATION)))

    anyio.run(main, backend="asyncio")
    assert seen == [{"MainThread"}]


def test_loop_names_are_bounded(runtime: BackpressureInstrumentor, metrics: MetricsCapture) -> None:
    names: list[str] = []

    def run() -> None:
        async def main() -> None:
            names.extend(monitor.name for monitor in MONITORS.active())

        asyncio.run(main())

    for index in range(MAX_LOOP_NAMES + 4):
        thread = threading.Thread(target=run, name=f"worker-{index}")
        thread.start()
        thread.join(30)
    assert len(names) == MAX_LOOP_NAMES + 4
    assert len(set(names)) <= MAX_LOOP_NAMES + 1
    assert names[-1] == "_OTHER"


def test_instrumenting_inside_a_running_loop_monitors_it_until_it_closes(
    metrics: MetricsCapture,
) -> None:
    instrumentor = BackpressureInstrumentor()
    seen: list[set[str]] = []

    async def main() -> None:
        instrumentor.instrument(meter_provider=metrics.meter_provider, settings=RUNTIME_ONLY)
        await asyncio.sleep(0)
        seen.append(set(_series(metrics, UTILIZATION)))

    try:
        asyncio.run(main())
        assert seen == [{"MainThread"}]
        assert _series(metrics, UTILIZATION) == {}  # closed: dropped at collection
        assert list(MONITORS.active()) == []
    finally:
        instrumentor.uninstrument()


def test_uninstrument_stops_sampling_and_unwraps_the_selector(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    running = threading.Event()
    stopped = threading.Event()
    finish = threading.Event()
    state: dict[str, object] = {}

    def run() -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            state["selector"] = loop._selector  # type: ignore[attr-defined]
            # samples fall due every 10 ms and timers run in order, so at least the
            # first ran before this sleep ends (more only if the machine is idle)
            await asyncio.sleep(0.05)
            running.set()
            await asyncio.to_thread(stopped.wait)
            # several sampling periods with the part off
            for _ in range(10):
                await asyncio.sleep(0.01)
            finish.set()

        asyncio.run(main())

    thread = threading.Thread(target=run, name="to-stop", daemon=True)
    thread.start()
    _wait_for(running)
    assert "select" in vars(state["selector"])
    runtime.uninstrument()
    assert "select" not in vars(state["selector"])
    before = metrics.histogram(DELAY, {LOOP_NAME: "to-stop"})
    stopped.set()
    _wait_for(finish)
    thread.join(30)
    after = metrics.histogram(DELAY, {LOOP_NAME: "to-stop"})
    assert before is not None
    assert after is not None
    assert before.count >= 1  # it was sampling
    # at most the one tick already scheduled runs, and it records nothing
    assert after.count == before.count
    assert _series(metrics, UTILIZATION) == {}
    assert not hasattr(asyncio.BaseEventLoop.__dict__["run_forever"], "__wrapped__")
    assert list(MONITORS.active()) == []


def test_uvloop_loops_get_delay_but_no_utilization(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    import uvloop

    blocked: list[float] = []
    seen: list[set[str]] = []

    async def main() -> None:
        await asyncio.sleep(0.05)  # several samples first: the sampler is running
        start = time.perf_counter()
        time.sleep(0.2)  # noqa: ASYNC251 - the blocking call under test
        blocked.append(time.perf_counter() - start)
        await asyncio.sleep(0.05)
        seen.append(set(_series(metrics, UTILIZATION)))

    uvloop.run(main())
    point = metrics.histogram(DELAY, {LOOP_NAME: "MainThread"})
    assert point is not None
    # how late the timer ran: the block less at most one period (libuv's clock is in ms)
    assert point.max >= blocked[0] - 0.01 - 0.001
    assert seen == [set()]  # libuv polls where Python cannot time it


def test_instrument_uninstrument_instrument_round_trip(metrics: MetricsCapture) -> None:
    instrumentor = BackpressureInstrumentor()
    seen: list[set[str]] = []

    async def main() -> None:
        seen.append(set(_series(metrics, UTILIZATION)))

    for _ in range(2):
        instrumentor.instrument(meter_provider=metrics.meter_provider, settings=RUNTIME_ONLY)
        asyncio.run(main())
        instrumentor.uninstrument()
        asyncio.run(main())  # not monitored
    assert seen == [{"MainThread"}, set(), {"MainThread"}, set()]
    assert not hasattr(asyncio.BaseEventLoop.__dict__["run_forever"], "__wrapped__")
