"""Names and helpers shared by the pool tests that drive a pool through known states."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import otel_backpressure
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.testing import FakeClock, MetricsCapture

NAME = "db.client.connection.pool.name"
# MetricsCapture.snapshot() keys for the two series of db.client.connection.count
USED = "db.client.connection.count{db.client.connection.state=used}"
IDLE = "db.client.connection.count{db.client.connection.state=idle}"


def buckets(**counts: int) -> tuple[int, ...]:
    """Bucket counts for the advice boundaries; b1 is (0.001, 0.005], b3 (0.01, 0.05]."""
    values = [0] * 10
    for key, count in counts.items():
        values[int(key[1:])] = count
    return tuple(values)


def storage_inline(obj: object, attribute: str) -> bool:
    """Whether ``obj`` still keeps its attributes inline, with no dictionary made for them.

    CPython 3.11+ stores a new instance's attribute values in the object
    itself; asking it for its ``__dict__`` makes a dictionary of them, for
    good on 3.11 and 3.12, and every ``self.x`` then misses the specialised
    fast path. ``gc.get_referents()`` lists the inline values one by one (the
    value of ``attribute`` among them) and, once that dictionary exists, lists
    it instead (checked on 3.11.7 and 3.12.1; 3.13.0 keeps listing the values,
    and has no such cost). Always False before 3.11: every instance has a dict.
    """
    value = getattr(obj, attribute)
    return any(referent is value for referent in gc.get_referents(obj))


def inline_before(library_asks_for_dict: bool) -> bool:
    """What ``storage_inline`` reads on this Python before this package touches an object.

    False before 3.11 (every instance has a dict); on 3.11 and 3.12 True unless
    the library itself asked the object for its ``__dict__`` (SQLAlchemy 1.4's
    ``Pool.__init__`` does); True on 3.13, whose referents list the values
    either way.
    """
    if sys.version_info < (3, 11):
        return False
    return sys.version_info >= (3, 13) or not library_asks_for_dict


def instrumenting_keeps_inline(
    target: object, pool: Any, metrics: MetricsCapture, *, library_asks_for_dict: bool
) -> None:
    """Instrument ``target`` (whose pool is ``pool``), collect, uninstrument, and assert
    that ``pool`` kept its attributes inline (after checking it had them inline before
    where this Python can show it: see ``inline_before``)."""
    before = storage_inline(pool, "_invoke_creator")
    assert before is inline_before(library_asks_for_dict)  # the case is really there
    handle = otel_backpressure.instrument(target, meter_provider=metrics.meter_provider)
    try:
        assert metrics.snapshot({NAME: handle.pool_name})[USED] == 0
    finally:
        handle.uninstrument()
    assert storage_inline(pool, "_invoke_creator") is before


def fresh_class(cls: type[Any]) -> type[Any]:
    """A subclass of ``cls`` whose instances share a table of attribute names of their own.

    CPython 3.11+ gives all instances of a class one table of the names their
    inline values are stored under, of at most 30 names; once it is full, an
    instance given a name not in it gets a dictionary, however the name is set.
    Other tests set names of their own on SQLAlchemy's pools (a broken
    ``checkedout``, say), so a test of ``storage_inline`` uses a class of its own.
    """
    return type(cls.__name__, (cls,), {})


def slow_connection(clock: FakeClock, seconds: float) -> type[Any]:
    """An ``asyncpg.Connection`` class whose connections "take" ``seconds`` on the fake clock.

    asyncpg makes the object while it connects, on every version, so the time
    lands in whatever times the connect: a raw pool's (``connection_class=``)
    or SQLAlchemy's (``connect_args={"connection_class": ...}``), 1.4 and 2.x.
    """
    import asyncpg

    class SlowConnection(asyncpg.Connection):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            clock.advance(seconds)
            super().__init__(*args, **kwargs)

    return SlowConnection


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``predicate()`` holds (at most about 5 s)."""
    for _ in range(5_000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def poll(predicate: Callable[[], bool], what: str) -> None:
    """Wait until ``predicate()`` holds (at most about 5 s) while other threads progress."""
    for _ in range(5_000):
        if predicate():
            return
        time.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def counts_of(metrics: MetricsCapture, name: str) -> dict[str, Any]:
    """Every count and limit series of pool ``name`` now (the histograms left out)."""
    snapshot = metrics.snapshot({NAME: name})
    return {k: v for k, v in snapshot.items() if not k.endswith("_time")}


def pool_names(metrics: MetricsCapture) -> list[str]:
    """The pool names ``db.client.connection.count`` reports now, sorted."""
    count = metrics.collect().get("db.client.connection.count")
    if count is None:
        return []
    return sorted(
        {str(point.attributes[NAME]) for point in count.data.data_points if point.attributes}
    )


@pytest.fixture
def instrumentor() -> Iterator[BackpressureInstrumentor]:
    """A ``BackpressureInstrumentor``, uninstrumented after the test if it is still on."""
    instrumentor = BackpressureInstrumentor()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
