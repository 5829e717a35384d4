"""RedisStore's own connection and the deadline of its round trips, against private servers."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
import redis
import redis.asyncio
from benchmarks._redis_server import Server as PrivateRedis

from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore
from otel_backpressure.testing import MetricsCapture
from redis_compat import aclose, sync_client

pytestmark = pytest.mark.integration

BURST = Policy("burst", rate=5, period=3600, burst=5)


def connections(server: PrivateRedis) -> int:
    """Clients connected to ``server``, not counting the one asking."""
    with sync_client(port=server.port) as admin:
        return len(admin.client_list()) - 1


def store_errors(metrics: MetricsCapture) -> dict[str, float]:
    errors = metrics.collect().get("backpressure.rate_limit.store.errors")
    if errors is None:
        return {}
    points = metrics.points(errors)
    return {dict(key)["error.type"]: point.value for key, point in points.items()}


async def test_one_connection_of_its_own_with_the_clients_settings(
    private_redis: PrivateRedis,
) -> None:
    # the caller's client: database 3, replies decoded, redis-py's own socket timeout
    client = redis.asyncio.Redis(
        port=private_redis.port, db=3, decode_responses=True, socket_timeout=5
    )
    store = RedisStore(client=client, prefix="own:")
    limiter = RateLimiter([BURST], store=store)
    assert connections(private_redis) == 0
    decisions = [await limiter.hit("k") for _ in range(3)]
    decisions += await asyncio.gather(*(limiter.hit("k") for _ in range(10)))
    assert sum(d.allowed for d in decisions) == 5
    assert connections(private_redis) == 1  # the store's; the client's pool made none
    key = store.keys("k", [BURST])[0]
    with sync_client(port=private_redis.port, db=3) as db3:
        assert db3.exists(key)  # the client's database
    with sync_client(port=private_redis.port, db=0) as db0:
        assert not db0.exists(key)
    await store.aclose()
    assert connections(private_redis) == 0
    assert await client.get(key) is not None  # the client is still the caller's, open
    await aclose(client)


async def test_each_round_trip_is_cut_at_its_own_deadline(
    private_redis: PrivateRedis, metrics: MetricsCapture
) -> None:
    timeout = 0.3
    store = RedisStore(private_redis.url, prefix="deadline:", timeout=timeout)
    limiter = RateLimiter([BURST], store=store, meter_provider=metrics.meter_provider)
    loop = asyncio.get_running_loop()
    # round trips for longer than one timeout: the one timer fires under them and
    # follows the round trip in flight instead of cutting it
    start = loop.time()
    while loop.time() - start < 1.5 * timeout:
        await limiter.hit("k", policies=[Policy("fast", rate=10**6, period=1)])
        await asyncio.sleep(0.01)
    assert store_errors(metrics) == {}
    private_redis.pause()
    try:
        start = loop.time()
        assert (await limiter.hit("k")).allowed  # failed open...
        elapsed = loop.time() - start
    finally:
        private_redis.resume()
    # ...at its own deadline: not at the one the timer was armed for earlier
    assert timeout - 0.01 <= elapsed < timeout + 1.0
    assert set(store_errors(metrics)) == {"TimeoutError"}
    assert (await limiter.hit("k")).allowed is not None
    await store.aclose()


async def test_a_cut_round_trip_leaves_the_callers_task_uncancelled(
    private_redis: PrivateRedis,
) -> None:
    # 3.11+: one timer cancels the round trip and takes the cancellation back
    # (Task.uncancel); 3.10: asyncio.wait_for per round trip. Either way the
    # caller's task and its own deadline never see the store's cancellation.
    store = RedisStore(private_redis.url, prefix="uncancel:", timeout=0.05)
    limiter = RateLimiter([BURST], store=store)
    assert (await limiter.hit("k")).allowed  # connected

    async def under_the_callers_deadline() -> None:
        task = asyncio.current_task()  # wait_for's own task before 3.12
        assert task is not None
        assert (await limiter.hit("k")).allowed  # failed open after the store's timeout
        if sys.version_info >= (3, 11):
            assert task.cancelling() == 0  # the store's cancellation was taken back
        await asyncio.sleep(0.01)  # and the caller's scope still works normally

    private_redis.pause()
    try:
        await asyncio.wait_for(under_the_callers_deadline(), 10)  # far away
    finally:
        private_redis.resume()
    assert store.breaker.outages == 1
    await store.aclose()


async def test_the_callers_cancellation_is_never_taken_for_a_timeout(
    private_redis: PrivateRedis, metrics: MetricsCapture
) -> None:
    store = RedisStore(private_redis.url, prefix="outer:", timeout=5.0)
    limiter = RateLimiter([BURST], store=store, meter_provider=metrics.meter_provider)
    assert (await limiter.hit("k")).allowed
    private_redis.pause()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(limiter.hit("k"), 0.05)  # the caller gives up first
    finally:
        private_redis.resume()
    assert store.breaker.outages == 0  # an abandoned round trip is no outage
    assert store_errors(metrics) == {}
    decision = await limiter.hit("k")  # a new connection: the old one was mid-reply
    # the abandoned command reached the server before the connection closed, so the
    # server may well decide it once it runs again: it is the caller's choice to leave
    assert decision.allowed
    assert decision.remaining in (2, 3)
    await store.aclose()


def test_another_threads_event_loop_goes_through_the_client(private_redis: PrivateRedis) -> None:
    store = RedisStore(private_redis.url, prefix="threads:")
    limiter = RateLimiter([BURST], store=store)
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        # the store's connection belongs to the other loop, which keeps running
        first = asyncio.run_coroutine_threadsafe(limiter.hit("k"), other).result(10)
        assert first.allowed

        async def here() -> list[bool]:
            allowed = [(await limiter.hit("k")).allowed for _ in range(6)]
            # the client's pooled connection belongs to this loop: closed with it
            await store.client.connection_pool.disconnect()
            return allowed

        assert asyncio.run(here()) == [True] * 4 + [False] * 2  # exact across loops
        later = asyncio.run_coroutine_threadsafe(limiter.hit("k"), other).result(10)
        assert not later.allowed
        assert connections(private_redis) == 1
        # closed from this thread: the store's connection is closed on its own loop
        asyncio.run(store.aclose())
        deadline = time.monotonic() + 5
        while connections(private_redis) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert connections(private_redis) == 0
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        other.close()
