"""RedisStore against real servers: the shared one, and private ones to flush and restart."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore
from otel_backpressure.testing import FakeClock, MetricsCapture

pytestmark = pytest.mark.integration

POLICY = "backpressure.rate_limit.policy"
HOURLY = Policy("hourly", rate=40, period=3600)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of our own, so a test may flush, kill and restart it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server must be installed for these tests"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                    return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


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
        allowed = 0
        for _ in range(hits):
            if (await limiter.hit("shared-key")).allowed:
                allowed += 1
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
    # another policy set on the same client leaves the hourly state alone
    await limiter.hit("client", policies=[second])
    assert await shared_store.client.pttl(keys[0]) > 10_000
    with pytest.raises(ValueError, match="prefix"):
        RedisStore("redis://127.0.0.1/0", prefix="{app}:")


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
    store = RedisStore(private_redis.url, prefix="restart:", timeout=1.0, backoff=5, clock=clock)
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


async def test_unreachable_redis_fails_open_is_metered_and_not_retried_every_call(
    metrics: MetricsCapture,
) -> None:
    clock = FakeClock()
    store = RedisStore(
        f"redis://127.0.0.1:{free_port()}/0", timeout=0.5, backoff=2, max_backoff=8, clock=clock
    )
    limiter = RateLimiter([HOURLY], store=store, meter_provider=metrics.meter_provider)
    decisions = [await limiter.hit("k") for _ in range(5)]
    assert all(d.allowed for d in decisions)
    assert errors(metrics, "hourly", "redis.exceptions.ConnectionError") == 1
    assert errors(metrics, "hourly", "circuit_open") == 4  # no connection attempt while open
    clock.advance(2)
    await limiter.hit("k")  # half open: one probe, fails, back-off doubles
    assert errors(metrics, "hourly", "redis.exceptions.ConnectionError") == 2
    clock.advance(2)
    await limiter.hit("k")
    assert errors(metrics, "hourly", "circuit_open") == 5
    assert "circuit=open" in repr(store)
    await store.aclose()


async def test_fail_closed_rejects_until_the_back_off_ends(metrics: MetricsCapture) -> None:
    clock = FakeClock()
    store = RedisStore(
        f"redis://127.0.0.1:{free_port()}/0", fail_open=False, backoff=3, clock=clock
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
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.05, backoff=1, clock=clock)
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
    with pytest.raises(ValueError, match="max_backoff"):
        RedisStore("redis://127.0.0.1/0", backoff=5, max_backoff=1)
    with pytest.raises(TypeError, match="client"):
        RedisStore(client=object())
