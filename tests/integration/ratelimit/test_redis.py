"""RedisStore against real servers: the shared one, and private ones to flush and restart."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio
from benchmarks._redis_server import Server as PrivateRedis
from benchmarks._redis_server import free_port

from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore
from otel_backpressure.testing import FakeClock, MetricsCapture
from redis_compat import aclose

pytestmark = pytest.mark.integration

POLICY = "backpressure.rate_limit.policy"
HOURLY = Policy("hourly", rate=40, period=3600)


@pytest.fixture
async def shared_store(redis_url: str) -> AsyncIterator[RedisStore]:
    prefix = f"test-ratelimit-core:{uuid.uuid4().hex}:"
    store = RedisStore(redis_url, prefix=prefix)
    yield store
    keys = [key async for key in store.client.scan_iter(match=prefix + "*")]
    if keys:
        await store.client.delete(*keys)
    await store.aclose()


def errors(metrics: MetricsCapture, policy: str, error_type: str) -> float | None:
    return metrics.value(
        "backpressure.rate_limit.store.errors", {POLICY: policy, "error.type": error_type}
    )


def _hammer(url: str, prefix: str, hits: int, results: multiprocessing.Queue[int]) -> None:
    async def run() -> int:
        store = RedisStore(url, prefix=prefix, timeout=5.0, fail_open=False)
        limiter = RateLimiter([HOURLY], store=store)
        # half one by one, half at once (batched): exact either way
        allowed = 0
        for _ in range(hits // 2):
            if (await limiter.hit("shared-key")).allowed:
                allowed += 1
        at_once = await asyncio.gather(*(limiter.hit("shared-key") for _ in range(hits // 2)))
        allowed += sum(decision.allowed for decision in at_once)
        await store.aclose()
        return allowed

    results.put(asyncio.run(run()))


def test_processes_hammering_one_key_never_exceed_the_bound(redis_url: str) -> None:
    prefix = f"test-ratelimit-core:{uuid.uuid4().hex}:"
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[int] = context.Queue()
    workers = [
        context.Process(target=_hammer, args=(redis_url, prefix, 30, results)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sum(counts) == HOURLY.burst  # 120 attempts, exactly 40 allowed
    with redis.Redis.from_url(redis_url) as client:
        client.delete(prefix + "shared-key")


async def test_one_slot_per_client_and_keys_that_expire_when_idle(
    shared_store: RedisStore,
) -> None:
    second = Policy("burst", rate=2, period=10)
    limiter = RateLimiter([HOURLY, second], store=shared_store)
    assert (await limiter.hit("client")).allowed
    keys = shared_store.keys("client", [HOURLY, second])
    assert len(set(keys)) == 2
    # one hash tag per client: every key of a call is in one Redis Cluster slot
    assert all("{client}" in key for key in keys)
    assert await shared_store.client.exists(*keys) == 2
    hourly_ttl = await shared_store.client.pttl(keys[0])
    burst_ttl = await shared_store.client.pttl(keys[1])
    assert 0 < hourly_ttl <= 90_000 + 2  # idle once the hourly TAT (90 s ahead) passes
    assert 0 < burst_ttl <= 5_000 + 2
    # another policy set on the same client leaves the hourly state alone; a lone
    # policy (the script's path without tables) expires its key the same way
    await limiter.hit("client", policies=[second])
    assert await shared_store.client.pttl(keys[0]) > 10_000
    assert 5_000 < await shared_store.client.pttl(keys[1]) <= 10_000 + 2
    with pytest.raises(ValueError, match="prefix"):
        RedisStore("redis://127.0.0.1/0", prefix="{app}:")


def script_calls(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_decisions_go_out_together_and_stay_exact(
    private_redis: PrivateRedis,
) -> None:
    store = RedisStore(private_redis.url, prefix="batch:")
    burst = Policy("burst", rate=5, period=3600, burst=5)
    limiter = RateLimiter([HOURLY, burst], store=store)
    assert (await limiter.hit("warm")).allowed  # the first call loads the script
    before = script_calls(private_redis.url)
    # a lone decision goes out at once, in its own script call
    assert (await limiter.hit("warm")).allowed
    assert script_calls(private_redis.url) == before + 1
    keys = [f"client-{i % 10}" for i in range(200)]
    decisions = await asyncio.gather(*(limiter.hit(key) for key in keys))
    calls = script_calls(private_redis.url)
    assert calls - before - 1 < 20  # 200 decisions, a handful of round trips
    by_key: dict[str, int] = {}
    for key, decision in zip(keys, decisions, strict=True):
        by_key[key] = by_key.get(key, 0) + decision.allowed
    assert by_key == {f"client-{i}": 5 for i in range(10)}  # exactly the burst per key
    rejected = [d for d in decisions if not d.allowed]
    assert all(d.policy.name == "burst" and d.retry_after > 0 for d in rejected)
    # one by one after the crowd: each its own call again
    await limiter.hit("warm")
    assert script_calls(private_redis.url) == calls + 1
    await store.aclose()


async def test_a_key_of_another_type_fails_only_its_own_decision(
    private_redis: PrivateRedis, metrics: MetricsCapture
) -> None:
    store = RedisStore(private_redis.url, prefix="foreign:")
    burst = Policy("burst", rate=2, period=3600, burst=2)
    limiter = RateLimiter([burst], store=store, meter_provider=metrics.meter_provider)
    await store.client.hset(store.keys("poisoned", [burst])[0], "field", "value")
    keys = ["poisoned", *(f"client-{i % 5}" for i in range(30))]
    decisions = await asyncio.gather(*(limiter.hit(key) for key in keys))
    assert decisions[0].allowed  # failed open, alone
    assert sum(d.allowed for d in decisions[1:]) == 10  # the batch around it: exact
    assert errors(metrics, "burst", "WRONGTYPE") == 1
    assert not store.circuit_open  # Redis answered: no outage
    assert store.breaker.outages == 0
    await store.aclose()


async def test_a_key_holding_a_non_number_is_idle_state_and_overwritten(
    private_redis: PrivateRedis, metrics: MetricsCapture
) -> None:
    store = RedisStore(private_redis.url, prefix="garbage:")
    burst = Policy("burst", rate=2, period=3600, burst=2)
    limiter = RateLimiter([burst], store=store, meter_provider=metrics.meter_provider)
    key = store.keys("k", [burst])[0]
    await store.client.set(key, "not a number")
    assert (await limiter.hit("k")).remaining == 1  # decided from a fresh state
    assert int(await store.client.get(key)) > 0
    assert metrics.collect().get("backpressure.rate_limit.store.errors") is None
    assert store.breaker.outages == 0
    await store.aclose()


async def test_a_flushed_script_cache_is_survived(
    private_redis: PrivateRedis, metrics: MetricsCapture
) -> None:
    store = RedisStore(private_redis.url, prefix="flush:")
    limiter = RateLimiter([HOURLY], store=store, meter_provider=metrics.meter_provider)
    assert (await limiter.hit("k")).remaining == 39
    await store.client.script_flush()
    assert (await limiter.hit("k")).remaining == 38  # NOSCRIPT -> reloaded, state kept
    assert errors(metrics, "hourly", "redis.exceptions.NoScriptError") is None
    await store.aclose()


async def test_a_restarted_redis_is_survived(
    private_redis: PrivateRedis, metrics: MetricsCapture
) -> None:
    clock = FakeClock()
    store = RedisStore(
        private_redis.url, prefix="restart:", timeout=1.0, probe_interval=5, clock=clock
    )
    limiter = RateLimiter([HOURLY], store=store, meter_provider=metrics.meter_provider)
    assert (await limiter.hit("k")).remaining == 39
    private_redis.stop()
    private_redis.start()  # same port, empty, no scripts loaded
    outage = await limiter.hit("k")  # the pooled connection is dead: fails open once
    assert outage.allowed
    assert store.circuit_open
    clock.advance(5)
    back = await limiter.hit("k")
    assert (back.allowed, back.remaining) == (True, 39)  # fresh server, fresh state
    assert not store.circuit_open
    points = metrics.points(metrics.collect()["backpressure.rate_limit.store.errors"])
    assert sum(point.value for point in points.values()) == 1
    await store.aclose()


ONCE = Policy("once", rate=1, period=3600, burst=1)  # after one hit, Redis rejects


@pytest.mark.parametrize("own_client", [True, False], ids=["url", "caller-client"])
async def test_a_stall_is_one_outage_and_one_probe_resumes_enforcement(
    private_redis: PrivateRedis, metrics: MetricsCapture, own_client: bool
) -> None:
    clock = FakeClock()
    if own_client:
        store = RedisStore(private_redis.url, prefix="stall:", timeout=0.2, clock=clock)
    else:
        # a caller's client, decoding replies to str: the store reads either
        client = redis.asyncio.Redis.from_url(private_redis.url, decode_responses=True)
        store = RedisStore(client=client, prefix="stall:", timeout=0.2, clock=clock)
    limiter = RateLimiter([ONCE], store=store, meter_provider=metrics.meter_provider)
    assert (await limiter.hit("k")).allowed
    assert not (await limiter.hit("k")).allowed  # enforced
    private_redis.pause()
    try:
        # 50 requests in flight when Redis freezes: none fails, all are let through
        during = await asyncio.gather(*(limiter.hit("k") for _ in range(50)))
        assert all(decision.allowed for decision in during)
        assert store.breaker.outages == 1
        assert store.circuit_open
    finally:
        private_redis.resume()
    # Redis answers again; the breaker still skips it until the next probe is due
    assert (await limiter.hit("k")).allowed
    clock.advance(store.probe_interval)
    assert not (await limiter.hit("k")).allowed  # the probe: enforced again
    assert not store.circuit_open
    assert not (await limiter.hit("k")).allowed
    assert store.breaker.outages == 1
    points = metrics.points(metrics.collect()["backpressure.rate_limit.store.errors"])
    assert sum(point.value for point in points.values()) == 51
    await store.aclose()
    if not own_client:
        await aclose(client)


# the abandoned coroutine complains when collected: that is the scenario, not a fault
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_round_trip_abandoned_with_its_event_loop_does_not_block_the_next_loop(
    private_redis: PrivateRedis,
) -> None:
    store = RedisStore(private_redis.url, prefix="loops:", timeout=5.0)
    limiter = RateLimiter([ONCE], store=store)
    first = asyncio.new_event_loop()
    private_redis.pause()
    try:
        # a decision in flight when its loop is closed, its coroutine never finished
        in_flight = first.create_task(limiter.hit("k"))
        first.run_until_complete(asyncio.sleep(0.05))
        first.close()
    finally:
        private_redis.resume()

    async def next_loop(limiter: RateLimiter) -> None:
        # answered (by Redis or failed open), not queued behind the dead round trip
        await asyncio.wait_for(limiter.hit("k"), 10)

    asyncio.run(next_loop(limiter))
    # its client's connection still refers to the abandoned coroutine: drop it all
    del in_flight, first, limiter, store
    gc.collect()  # here, not in whichever test happens to run next


async def test_unreachable_redis_fails_open_is_metered_and_not_retried_every_call(
    metrics: MetricsCapture,
) -> None:
    clock = FakeClock()
    store = RedisStore(
        f"redis://127.0.0.1:{free_port()}/0", timeout=0.5, probe_interval=2, clock=clock
    )
    limiter = RateLimiter([HOURLY], store=store, meter_provider=metrics.meter_provider)
    decisions = [await limiter.hit("k") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert errors(metrics, "hourly", "redis.exceptions.ConnectionError") == 1
    assert errors(metrics, "hourly", "circuit_open") == 4  # no connection attempt while open
    clock.advance(2)
    await limiter.hit("k")  # half open: one probe, fails
    assert errors(metrics, "hourly", "redis.exceptions.ConnectionError") == 2
    clock.advance(1.9)
    await limiter.hit("k")
    assert errors(metrics, "hourly", "circuit_open") == 5
    clock.advance(0.1)  # the interval does not grow: the next probe goes one interval later
    await limiter.hit("k")
    assert errors(metrics, "hourly", "redis.exceptions.ConnectionError") == 3
    assert store.breaker.outages == 1
    assert "circuit=open" in repr(store)
    await store.aclose()


async def test_fail_closed_rejects_until_the_back_off_ends(metrics: MetricsCapture) -> None:
    clock = FakeClock()
    store = RedisStore(
        f"redis://127.0.0.1:{free_port()}/0", fail_open=False, probe_interval=3, clock=clock
    )
    limiter = RateLimiter([HOURLY], store=store, meter_provider=metrics.meter_provider)
    rejected = await limiter.hit("k")
    assert not rejected.allowed
    assert rejected.retry_after == pytest.approx(3)
    clock.advance(1)
    assert (await limiter.hit("k")).retry_after == pytest.approx(2)
    attrs = {POLICY: "hourly", "backpressure.rate_limit.result": "rejected"}
    assert metrics.value("backpressure.rate_limit.requests", attrs) == 2
    await store.aclose()


async def test_a_slow_redis_is_bounded_by_the_timeout(metrics: MetricsCapture) -> None:
    done = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for store in (
        RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.05),
        # a caller's client with no timeout of its own: the store bounds the call
        RedisStore(client=redis.asyncio.Redis(port=port), timeout=0.05),
    ):
        limiter = RateLimiter([HOURLY], store=store, meter_provider=metrics.meter_provider)
        assert (await limiter.hit("k")).allowed
        await store.aclose()
    points = metrics.points(metrics.collect()["backpressure.rate_limit.store.errors"])
    types = {dict(key)["error.type"] for key in points}
    assert types <= {"redis.exceptions.TimeoutError", "TimeoutError"}
    assert sum(point.value for point in points.values()) == 2
    done.set()
    server.close()
    await server.wait_closed()


async def test_a_cancelled_probe_does_not_wedge_the_breaker(metrics: MetricsCapture) -> None:
    done = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = FakeClock()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.05, probe_interval=1, clock=clock)
    limiter = RateLimiter([HOURLY], store=store, meter_provider=metrics.meter_provider)
    await limiter.hit("k")  # times out: the breaker opens
    clock.advance(1)
    probe = asyncio.create_task(limiter.hit("k"))
    await asyncio.sleep(0)
    probe.cancel()  # e.g. the client went away mid-request
    with pytest.raises(asyncio.CancelledError):
        await probe
    await limiter.hit("k")  # probes again instead of failing fast forever
    points = metrics.points(metrics.collect()["backpressure.rate_limit.store.errors"])
    by_type = {dict(key)["error.type"]: point.value for key, point in points.items()}
    assert by_type.get("circuit_open") is None
    assert sum(by_type.values()) == 2
    await store.aclose()
    done.set()
    server.close()
    await server.wait_closed()


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match="url or client"):
        RedisStore()
    with pytest.raises(ValueError, match="url or client"):
        RedisStore("redis://x", client=object())
    with pytest.raises(ValueError, match="timeout"):
        RedisStore("redis://127.0.0.1/0", timeout=0)
    # finite but absurd: redis-py and the event loop would overflow on them later
    with pytest.raises(ValueError, match=r"timeout must be from 0.001 to 3_600 seconds"):
        RedisStore("redis://127.0.0.1/0", timeout=1e300)
    with pytest.raises(ValueError, match="probe_interval"):
        RedisStore("redis://127.0.0.1/0", probe_interval=float("inf"))
    with pytest.raises(ValueError, match="probe_interval"):
        RedisStore("redis://127.0.0.1/0", probe_interval=10**400)
    with pytest.raises(ValueError, match="timeout"):
        RedisStore("redis://127.0.0.1/0", timeout=float("nan"))
    with pytest.raises(TypeError, match="timeout"):
        RedisStore("redis://127.0.0.1/0", timeout="1")  # type: ignore[arg-type]
    assert RedisStore("redis://127.0.0.1/0", timeout=3600, probe_interval=0.001).timeout == 3600
    with pytest.raises(TypeError, match="client"):
        RedisStore(client=object())
