"""The Lua GCRA and ``gcra.py`` decide identically on the same inputs.

The script decides at the server's clock in production; here it is given the
time (its optional first argument), so both sides see the same arrivals.
Arrivals at the same instant go to the script as one batch, so this also
proves a batch decides exactly like the same requests one by one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_backpressure.ratelimit import Policy, gcra
from otel_backpressure.ratelimit.redis import _load_script, _policy_args, _verdict

pytestmark = pytest.mark.integration

# a realistic server clock in µs (about 2026), where Lua's doubles must stay exact
EPOCH_US = 1_790_000_000_000_000


@st.composite
def policy_sets(draw: st.DrawFn) -> tuple[Policy, ...]:
    count = draw(st.integers(1, 3))
    policies = []
    for i in range(count):
        rate = draw(st.integers(1, 50))
        interval_us = draw(st.integers(1, 2_000_000))
        burst = draw(st.integers(1, 20))
        policy = Policy(f"p{i}", rate=rate, period=rate * interval_us / 1e6, burst=burst)
        # whole microseconds: the script's unit, so both sides use one interval
        assert policy.interval_ns == interval_us * 1_000
        policies.append(policy)
    return tuple(policies)


# (µs since the previous arrival, 0 = the same instant and the same batch; key; cost)
arrivals = st.lists(
    st.tuples(
        st.one_of(st.just(0), st.integers(0, 5_000_000)),
        st.sampled_from(["a", "b"]),
        st.integers(1, 4),
    ),
    min_size=1,
    max_size=40,
)


@pytest.fixture(scope="module")
def script_client(redis_url: str) -> Iterator[tuple[redis.Redis, object]]:
    client = redis.Redis.from_url(redis_url)
    yield client, client.register_script(_load_script())
    client.close()


def _batches(sequence: list[tuple[int, str, int]]) -> Iterator[tuple[int, list[tuple[str, int]]]]:
    """(time in µs, [(key, cost), ...]) per instant, in order."""
    now = EPOCH_US
    batch: list[tuple[str, int]] = []
    for gap, key, cost in sequence:
        if gap and batch:
            yield now, batch
            batch = []
        now += gap
        batch.append((key, cost))
    yield now, batch


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(policies=policy_sets(), sequence=arrivals)
def test_lua_and_python_decide_the_same(
    script_client: tuple[redis.Redis, object],
    policies: tuple[Policy, ...],
    sequence: list[tuple[int, str, int]],
) -> None:
    client, script = script_client
    prefix = f"test-ratelimit-lua:{uuid.uuid4().hex}:"
    suffixes = [_policy_args(policy)[0] for policy in policies]
    tail: list[object] = [len(policies)]
    for policy in policies:
        tail += _policy_args(policy)[1:]
    tats: dict[str, list[int | None]] = {"a": [None] * len(policies), "b": [None] * len(policies)}
    try:
        for now_us, batch in _batches(sequence):
            keys: list[str] = []
            args: list[object] = [now_us]
            for key, cost in batch:
                keys += [f"{prefix}{{{key}}}{suffix}" for suffix in suffixes]
                args += [cost, *tail]
            reply = script(keys=keys, args=args)  # type: ignore[operator]
            for i, (key, cost) in enumerate(batch):
                expected = gcra.decide(tats[key], now_us * 1_000, policies, cost)
                if expected.tats is not None:
                    tats[key] = list(expected.tats)
                values = [int(field) for field in reply.split()]
                assert _verdict(values, 5 * i) == expected._replace(tats=None)
        for key, held in tats.items():
            stored = client.mget([f"{prefix}{{{key}}}{suffix}" for suffix in suffixes])
            assert [None if v is None else int(v) * 1_000 for v in stored] == held
    finally:
        leftovers = list(client.scan_iter(match=prefix + "*"))
        if leftovers:
            client.delete(*leftovers)
