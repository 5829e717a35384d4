"""RedisStore on a real Redis Cluster: three private nodes, torn down after the test."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster
from benchmarks._redis_server import Server as PrivateRedis
from benchmarks._redis_server import free_port
from redis.crc import key_slot

from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore
from otel_backpressure.testing import FakeClock
from redis_compat import aclose

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[PrivateRedis]]:
    cli = shutil.which("redis-cli")
    assert cli, "redis-cli must be installed for these tests"
    with tempfile.TemporaryDirectory() as directory:
        nodes = []
        for _ in range(3):
            port = free_port(below=55_000)  # a node also listens on port + 10000
            config = str(Path(directory) / f"nodes-{port}.conf")
            nodes.append(
                PrivateRedis(
                    port,
                    *("--cluster-enabled", "yes", "--cluster-config-file", config),
                    # the slots of the other nodes keep serving while one node is down
                    *("--cluster-require-full-coverage", "no"),
                )
            )
        try:
            for node in nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in nodes]
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=60,
            )
            deadline = time.monotonic() + 30
            with redis.Redis(port=nodes[0].port) as client:
                while client.cluster("info")["cluster_state"] != "ok":
                    assert time.monotonic() < deadline, "the cluster did not become ok"
                    time.sleep(0.05)
            yield nodes
        finally:
            for node in nodes:
                node.stop()


async def test_a_batch_over_many_slots_decides_exactly(cluster: list[PrivateRedis]) -> None:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster[0].port)
    store = RedisStore(client=client, prefix="cluster:", timeout=2.0)
    policies = [Policy("burst", rate=3, period=3600, burst=3), Policy("day", rate=50, period=86400)]
    limiter = RateLimiter(policies, store=store)
    assert (await limiter.hit("lone")).allowed
    keys = [f"client-{i % 30}" for i in range(240)]
    nodes = {client.get_node_from_key(store.keys(key, policies)[0]).port for key in keys}
    assert len(nodes) == 3  # the batch really spans every node
    assert len({key_slot(store.keys(key, policies)[0].encode()) for key in keys}) == 30
    decisions = await asyncio.gather(*(limiter.hit(key) for key in keys))
    allowed: dict[str, int] = {}
    for key, decision in zip(keys, decisions, strict=True):
        allowed[key] = allowed.get(key, 0) + decision.allowed
    assert allowed == {f"client-{i}": 3 for i in range(30)}
    # nothing failed open: every decision came from the cluster
    assert store.counts.errors == {}
    assert not store.circuit_open
    await aclose(client)


async def _while_down(
    limiter: RateLimiter, store: RedisStore, clock: FakeClock, keys: list[str], on_down: set[str]
) -> None:
    during = await asyncio.gather(*(limiter.hit(key) for key in keys))
    # the down node's clients fail open; every other client stays enforced
    assert {key for key, d in zip(keys, during, strict=True) if d.allowed} == on_down
    clock.advance(store.probe_interval)
    healthy = [key for key in keys if key not in on_down]
    # alternate: the down node's probe fails, the healthy nodes' calls succeed
    for down_key, healthy_key in zip(sorted(on_down), healthy, strict=False):
        assert (await limiter.hit(down_key)).allowed  # failed open
        assert not (await limiter.hit(healthy_key)).allowed  # still enforced


async def test_one_node_down_leaves_the_others_enforced_and_does_not_flap(
    cluster: list[PrivateRedis],
) -> None:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster[0].port)
    await client.initialize()
    clock = FakeClock()
    store = RedisStore(client=client, prefix="partial:", timeout=0.3, clock=clock)
    once = Policy("once", rate=1, period=3600, burst=1)
    limiter = RateLimiter([once], store=store)
    down = cluster[2]
    keys = [f"client-{i}" for i in range(24)]
    ports = {key: client.get_node_from_key(store.keys(key, [once])[0]).port for key in keys}
    on_down = {key for key, port in ports.items() if port == down.port}
    assert 0 < len(on_down) < len(keys)
    assert all(await asyncio.gather(*(limiter.hit(key) for key in keys)))  # first hits
    down.pause()
    try:
        await _while_down(limiter, store, clock, keys, on_down)
    finally:
        down.resume()
    clock.advance(store.probe_interval)
    back = [await limiter.hit(key) for key in sorted(on_down)]
    assert not any(decision.allowed for decision in back)  # one probe: enforced again
    assert not store.circuit_open
    outages = {name: b.outages for name, b in store.node_breakers.items()}
    expected = {f"127.0.0.1:{node.port}": 0 for node in cluster}
    assert outages == {**expected, f"127.0.0.1:{down.port}": 1}
    await aclose(client)
