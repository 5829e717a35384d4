"""RedisStore on a real Redis Cluster: three private nodes, torn down after the test."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster
from redis.crc import key_slot

from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore

pytestmark = pytest.mark.integration


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        # cluster nodes also listen on port + 10000: keep below 55535
        ports = [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    return ports if max(ports) < 55_000 else _free_ports(count)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"redis-server did not start on port {port}")


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server, "redis-server must be installed for these tests"
    assert cli, "redis-cli must be installed for these tests"
    ports = _free_ports(3)
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as directory:
        try:
            for port in ports:
                processes.append(
                    subprocess.Popen(
                        [
                            server,
                            "--port",
                            str(port),
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(Path(directory) / f"nodes-{port}.conf"),
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            directory,
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            for port in ports:
                _wait_for_port(port)
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=60,
            )
            deadline = time.monotonic() + 30
            with redis.Redis(port=ports[0]) as client:
                while client.cluster("info")["cluster_state"] != "ok":
                    assert time.monotonic() < deadline, "the cluster did not become ok"
                    time.sleep(0.05)
            yield ports
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=10)


async def test_a_batch_over_many_slots_decides_exactly(cluster_ports: list[int]) -> None:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_ports[0])
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
    await client.aclose()
