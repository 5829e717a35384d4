"""Thread pools read at collection time: anyio limiters and ThreadPoolExecutors, exactly."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from types import SimpleNamespace

import anyio
import pytest

import contract
from otel_backpressure import BackpressureInstrumentor, instrument, pool_health
from otel_backpressure.runtime import (
    POOL_NAME,
    WAIT_BOUNDARIES,
    instrument_thread_pool,
)
from otel_backpressure.runtime._threads import time_waits
from otel_backpressure.testing import MetricsCapture

N, K = 3, 2


def _limiter(tokens: int) -> anyio.CapacityLimiter:
    """A limiter made outside any event loop, as apps do at import (anyio 4).

    anyio 3 makes one only from async code (it asks sniffio which library
    runs), so there it is made in an event loop of its own first; nothing in
    it belongs to that loop.
    """
    if int(version("anyio").split(".", 1)[0]) >= 4:
        return anyio.CapacityLimiter(tokens)

    async def make() -> anyio.CapacityLimiter:
        return anyio.CapacityLimiter(tokens)

    return asyncio.run(make())


def _state(metrics: MetricsCapture, name: str) -> dict[str, object]:
    snapshot = metrics.snapshot({POOL_NAME: name})
    return {
        key.removeprefix("backpressure.thread_pool."): value
        for key, value in snapshot.items()
        if key != "backpressure.thread_pool.wait_time"
    }


def _full(n: int, k: int) -> dict[str, object]:
    return {"used": n, "max": n, "queue.length": k, "usage": 1.0}


def _idle(n: int) -> dict[str, object]:
    return {"used": 0, "max": n, "queue.length": 0, "usage": 0.0}


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (state, not elapsed time, decides)."""
    with anyio.fail_after(30):
        while not condition():  # noqa: ASYNC110 - the state lives in other threads
            await asyncio.sleep(0.001)


def test_a_limiter_with_n_tokens_and_n_plus_k_tasks_is_full_then_idle(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    limiter = _limiter(N)
    handle = instrument(limiter, pool_name="uploads", meter_provider=metrics.meter_provider)
    release = threading.Event()
    seen: dict[str, object] = {}

    async def main() -> None:
        tasks = [
            asyncio.ensure_future(anyio.to_thread.run_sync(release.wait, limiter=limiter))
            for _ in range(N + K)
        ]
        await _until(lambda: limiter.statistics().tasks_waiting == K)
        seen["full"] = _state(metrics, "uploads")
        seen["health"] = pool_health(limiter)
        queued_at = time.perf_counter()
        release.set()
        await asyncio.gather(*tasks)
        seen["waited_at_least"] = time.perf_counter() - queued_at

    asyncio.run(main())
    assert seen["full"] == _full(N, K)
    assert _state(metrics, "uploads") == _idle(N)
    waits = metrics.histogram("backpressure.thread_pool.wait_time", {POOL_NAME: "uploads"})
    assert waits is not None
    assert tuple(waits.explicit_bounds) == WAIT_BOUNDARIES
    assert waits.count == N + K
    assert waits.min == 0.0  # the first N found a free token
    health = seen["health"]
    assert isinstance(health, dict)
    assert {k: v for k, v in health.items() if k != "timestamp"} == {
        "status": "critical",
        "pool_name": "uploads",
        "in_use": N,
        "available": 0,
        "pending": K,
        "timeouts": 0,
        "total_capacity": N,
        "idle_max": None,
        "idle_min": None,
        "overflow_active": None,
        "usage_percent": 100.0,
    }
    assert all(not contract.violations(m) for m in metrics.collect().values())
    handle.uninstrument()
    assert _state(metrics, "uploads") == {}


def test_the_queued_calls_waits_are_at_least_the_time_they_were_seen_queued(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    limiter = _limiter(1)
    instrument_thread_pool(limiter, pool_name="one", meter_provider=metrics.meter_provider)
    release = threading.Event()
    spans: list[float] = []

    async def main() -> None:
        tasks = [
            asyncio.ensure_future(anyio.to_thread.run_sync(release.wait, limiter=limiter))
            for _ in range(2)
        ]
        await _until(lambda: limiter.statistics().tasks_waiting == 1)
        seen = time.perf_counter()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*tasks)
        spans.append(time.perf_counter() - seen)

    asyncio.run(main())
    waits = metrics.histogram("backpressure.thread_pool.wait_time", {POOL_NAME: "one"})
    assert waits is not None
    assert waits.count == 2
    assert waits.max >= 0.05  # it was queued for all of that sleep, at least


def test_anyio_default_limiter_is_reported_as_anyio(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    release = threading.Event()
    seen: list[dict[str, object]] = []

    async def main() -> None:
        default = anyio.to_thread.current_default_thread_limiter()
        default.total_tokens = N
        tasks = [
            asyncio.ensure_future(anyio.to_thread.run_sync(release.wait)) for _ in range(N + K)
        ]
        await _until(lambda: default.statistics().tasks_waiting == K)
        seen.append(_state(metrics, "anyio"))
        release.set()
        await asyncio.gather(*tasks)
        seen.append(_state(metrics, "anyio"))

    asyncio.run(main())
    assert seen == [_full(N, K), _idle(N)]
    assert _state(metrics, "anyio") == {}  # its loop is closed: the series stopped


def test_an_executor_with_n_workers_and_n_plus_k_calls_is_full_then_idle(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def work() -> None:
        started.release()
        release.wait()

    with ThreadPoolExecutor(max_workers=N) as executor:
        handle = instrument_thread_pool(executor, meter_provider=metrics.meter_provider)
        assert handle.pool_name.startswith("ThreadPoolExecutor-")
        futures = [executor.submit(work) for _ in range(N + K)]
        for _ in range(N):
            assert started.acquire(timeout=30)
        assert _state(metrics, handle.pool_name) == _full(N, K)
        health = pool_health(executor)
        assert (health["status"], health["in_use"], health["pending"]) == ("critical", N, K)
        release.set()
        for future in futures:
            future.result(timeout=30)
        assert _state(metrics, handle.pool_name) == _idle(N)
        waits = metrics.histogram(
            "backpressure.thread_pool.wait_time", {POOL_NAME: handle.pool_name}
        )
        assert waits is not None
        assert waits.count == N + K
        handle.uninstrument()
        assert "submit" not in vars(executor)
        assert _state(metrics, handle.pool_name) == {}


def test_the_loops_default_executor_is_reported(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    release = threading.Event()
    started: list[None] = []
    seen: list[dict[str, object]] = []

    def work() -> None:
        started.append(None)
        release.wait()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=N))
        futures = [loop.run_in_executor(None, work) for _ in range(N + K)]
        await _until(lambda: len(started) == N)
        seen.append(_state(metrics, "asyncio.default_executor"))
        release.set()
        await asyncio.gather(*futures)
        seen.append(_state(metrics, "asyncio.default_executor"))

    asyncio.run(main())
    assert seen == [_full(N, K), _idle(N)]


def test_the_default_executor_made_by_asyncio_is_counted_from_its_first_call(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    release = threading.Event()
    started = threading.Event()
    seen: list[object] = []

    def work() -> None:
        started.set()
        release.wait()

    async def main() -> None:
        future = asyncio.get_running_loop().run_in_executor(None, work)
        await _until(started.is_set)
        seen.append(_state(metrics, "asyncio.default_executor")["used"])
        release.set()
        await future

    asyncio.run(main())
    assert seen == [1]


def test_instrument_rejects_other_targets_and_empty_names() -> None:
    with pytest.raises(TypeError, match=r"target must be an anyio\.CapacityLimiter"):
        instrument_thread_pool(object())
    with pytest.raises(ValueError, match="pool_name"):
        instrument_thread_pool(_limiter(1), pool_name=" ")


def test_pools_stop_reporting_when_the_part_is_uninstrumented(
    runtime: BackpressureInstrumentor, metrics: MetricsCapture
) -> None:
    async def main() -> None:
        await anyio.to_thread.run_sync(lambda: None)
        await asyncio.to_thread(lambda: None)
        names = {
            dict(p.attributes)[POOL_NAME]
            for p in metrics.collect()["backpressure.thread_pool.used"].data.data_points
        }
        assert names == {"anyio", "asyncio.default_executor"}
        runtime.uninstrument()
        assert "backpressure.thread_pool.used" not in metrics.collect() or not (
            metrics.collect()["backpressure.thread_pool.used"].data.data_points
        )

    asyncio.run(main())


def test_pool_health_of_an_executor_not_measured_does_not_guess_its_busy_threads() -> None:
    with ThreadPoolExecutor(max_workers=2) as executor:
        health = pool_health(executor)
    assert health["in_use"] is None
    assert health["usage_percent"] is None
    assert (health["status"], health["pool_name"], health["total_capacity"]) == (
        "healthy",
        None,
        2,
    )


@pytest.mark.parametrize("anyio_adds", ["on_grant", "on_wake"])
def test_every_token_taken_is_one_wait_whenever_anyio_adds_the_borrower(anyio_adds: str) -> None:
    # the containers of anyio's asyncio limiter, driven in the order each anyio
    # version uses: 4.10+ adds a woken waiter to the borrowers as it hands the
    # token over; before, the waiter adds itself when it runs again, and a task
    # that came later may take a free token in between
    limiter = SimpleNamespace(_borrowers=set(), _wait_queue=OrderedDict())
    waits = time_waits(limiter)
    assert waits is not None
    assert waits.early is not None  # no source has claimed them: the waits are kept here
    borrowers, queue = limiter._borrowers, limiter._wait_queue
    queue["c"] = queue["d"] = queue["gone"] = object()  # three tasks start waiting
    for _ in range(3):
        borrower, _event = queue.popitem(last=False)  # a release hands each a token
        if anyio_adds == "on_grant":
            borrowers.add(borrower)
    queue.pop("gone", None)  # cancelled after its token was handed over
    if anyio_adds == "on_grant":
        borrowers.discard("gone")  # anyio 4.10+ takes the token back
    borrowers.add("later")  # came later, found a free token at once
    if anyio_adds == "on_wake":
        borrowers.add("c")
        borrowers.add("d")
    borrowers.add("gone")  # acquires again, at once this time
    recorded = list(waits.early)
    assert len(recorded) == 5  # c, d and gone waited; later and gone's second try did not
    assert recorded.count(0.0) == 2
    assert not waits.granted
