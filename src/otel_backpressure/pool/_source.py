"""What a pool source is: the ``PoolSource`` protocol, the ``PoolReading`` it returns,
and the timing recorders it feeds.

A *source* adapts one kind of pool (SQLAlchemy's, asyncpg's, ...) to the
registry: it names the pool's server, reads the pool's state at collection
time, and times checkouts on the hot path into plain lists. How to add one is
in ``_registry``'s docstring.

Example::

    reading = source.read()   # PoolReading(used=1, idle=4, pending=0, timeouts=0, max=15, ...)
    reading.usage             # 0.0666...
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final, Protocol, TypeVar

__all__ = [
    "MAX_BUFFERED",
    "NOTHING",
    "PoolReading",
    "PoolSource",
    "RecorderSlots",
    "TimingRecorder",
    "peek_first_byte",
    "server_ended",
    "shadowed",
    "weak_pool",
]

_T = TypeVar("_T")

# A buffer longer than this is handed to the SDK on the hot path (amortised),
# so memory stays bounded however long the exporter waits between collections.
MAX_BUFFERED: Final = 4096


class PoolReading:
    """One pool's state now, in connections (requests for ``pending``).

    Every field maps to one instrument of the pool metric family, and the same
    reading feeds ``pool_health()``. ``None`` means "not known for this kind of
    pool": the series is not exported and the health field is ``None``.

    - ``used``: open connections checked out (``db.client.connection.count{state=used}``).
    - ``idle``: open connections checked in, ready to hand out (``state=idle``).
      A slot whose connection was closed, invalidated or lost is not counted.
    - ``pending``: checkouts waiting for a connection now.
    - ``timeouts``: checkouts that timed out so far (monotonic).
    - ``max``: most connections the pool opens; ``None`` when unbounded.
    - ``idle_max`` / ``idle_min``: most / fewest idle connections the pool keeps.
    - ``overflow``: connections open beyond the pool's resting size, never negative.
    """

    __slots__ = ("idle", "idle_max", "idle_min", "max", "overflow", "pending", "timeouts", "used")

    def __init__(
        self,
        *,
        used: int | None,
        pending: int,
        timeouts: int,
        idle: int | None = None,
        max: int | None = None,
        idle_max: int | None = None,
        idle_min: int | None = None,
        overflow: int | None = None,
    ) -> None:
        self.used = used
        self.pending = pending
        self.timeouts = timeouts
        self.idle = idle
        self.max = max
        self.idle_max = idle_max
        self.idle_min = idle_min
        self.overflow = overflow

    @property
    def usage(self) -> float | None:
        """``used / max`` (0..1), or None when either is not known or the pool is unbounded."""
        if not self.max or self.used is None:
            return None
        return self.used / self.max

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PoolReading):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"PoolReading({fields})"


class TimingRecorder:
    """Durations in seconds waiting for one provider's histograms (one per registration).

    The hot path appends to a list and calls ``flush()`` only when one grows
    past ``MAX_BUFFERED``; the provider's collection drains them otherwise. Lists,
    not deques: an append costs the same, and a drain is two C-level slice
    operations instead of a ``popleft()`` per value.
    """

    __slots__ = ("create", "flush", "use", "wait")

    def __init__(self) -> None:
        self.create: list[float] = []
        self.wait: list[float] = []
        self.use: list[float] = []
        self.flush: Callable[[], None] = _nothing

    def __repr__(self) -> str:
        return (
            f"TimingRecorder(create={len(self.create)}, wait={len(self.wait)}, "
            f"use={len(self.use)} buffered)"
        )


def _nothing() -> None:
    return None


class RecorderSlots:
    """The timing recorders a pool source feeds, one per provider it reports to.

    Read on every checkout: a tuple swapped whole, so never seen half-built.
    """

    __slots__ = ("recorders",)

    def __init__(self) -> None:
        self.recorders: tuple[TimingRecorder, ...] = ()

    def add_recorder(self, recorder: TimingRecorder) -> None:
        self.recorders = (*self.recorders, recorder)

    def remove_recorder(self, recorder: TimingRecorder) -> None:
        self.recorders = tuple(r for r in self.recorders if r is not recorder)


class PoolSource(Protocol):
    """One pool kind, as the registry and the metrics see it.

    Class level (called before any instance exists):

    - ``family``: which instrument family the source feeds (``"db"``: the
      ``db.client.connection.*`` table). A family with another table registers
      its metrics class in ``_metrics.FAMILIES``.
    - ``resolve(target)``: the object that *is* the pool for ``target`` (the
      key the registry files it under: an ``AsyncEngine`` and its
      ``sync_engine`` resolve to the same engine), or None when ``target`` is
      not this kind.
    - ``server(key)``: the default name's base,
      ``server.address[:server.port]/db.namespace`` as the driver resolves it
      (``_naming`` has the resolvers); never credentials.
    - ``peek(target)``: a ``PoolReading`` of a pool nobody instrumented (for
      ``pool_health()``), or None when ``target`` is not this kind; counts the
      pool cannot tell without hooks are None.

    Instance level: ``name``, ``alive`` (False once the pool is closed or
    collected: the registry drops it), ``read()`` (exporter thread; must not
    block, await or raise for a live pool), ``add_recorder``/``remove_recorder``
    (``RecorderSlots`` implements them), ``close()`` (give the pool back as it
    was; safe twice).
    """

    family: ClassVar[str]

    @property
    def name(self) -> str: ...

    @property
    def alive(self) -> bool: ...

    def read(self) -> PoolReading: ...

    def add_recorder(self, recorder: TimingRecorder) -> None: ...

    def remove_recorder(self, recorder: TimingRecorder) -> None: ...

    def close(self) -> None: ...


class PoolSourceClass(Protocol):
    """The class side of a source: how the registry builds one."""

    family: str

    def resolve(self, target: object) -> Any | None: ...

    def server(self, key: Any) -> str: ...

    def peek(self, target: object) -> PoolReading | None: ...

    def __call__(
        self,
        key: Any,
        *,
        name: str,
        clock: Callable[[], float],
        on_gone: Callable[[PoolSource], None],
    ) -> PoolSource: ...


def weak_pool(pool: _T, source: Any, on_gone: Callable[[Any], None] | None) -> weakref.ref[_T]:
    """A weak reference to ``pool`` whose collection calls ``on_gone(source)``.

    The source is held weakly too, so the callback keeps nothing alive. It may
    run inside any allocation (even while the registry's lock is held), so
    ``on_gone`` must only hand the source over (the registry's appends to a deque).
    """
    if on_gone is None:
        return weakref.ref(pool)
    source_ref = weakref.ref(source)

    def gone(_: object) -> None:
        collected = source_ref()
        if collected is not None:
            on_gone(collected)

    return weakref.ref(pool, gone)


def shadowed(obj: object, attribute: str) -> bool:
    """Whether something other than the class's method answers ``obj.<attribute>`` (a hook).

    Asked through ``getattr``, never ``obj.__dict__``: on CPython 3.11+ asking an
    instance for its ``__dict__`` turns its inline attribute storage into a
    dictionary for good, and every ``self.x`` in the pool's own code takes the
    slow path from then on (callgrind: about 4k instructions more per httpx
    request, per redis-py checkout). Hooks are set with ``setattr`` and removed
    with ``delattr`` for the same reason.
    """
    found = getattr(obj, attribute, None)
    return found is not None and getattr(found, "__self__", None) is not obj


# a libpq connection's socket, when its idle connection has something to read:
# the server's ErrorResponse ("E", sent when it terminates the backend) or EOF
_ENDED: Final = (b"", b"E")
_PEEK: Final = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


def server_ended(connection: Any) -> bool:
    """Whether the server has ended an *idle* psycopg/psycopg2 connection.

    A sync driver learns of a terminated backend (``pg_terminate_backend``, a
    restart) only when next used; until then the server's last words wait in
    the socket: its FATAL ErrorResponse, then EOF. One non-blocking
    ``recv(MSG_PEEK)`` per idle connection per collection reads the first byte
    without taking it or touching the driver's state. Other messages an idle
    connection may receive (NOTICE, NOTIFY, ParameterStatus) mean it is open,
    as does a TLS connection (its bytes are records, never an ``E``). Only for
    connections nobody has checked out: a connection in use may be reading a
    query's error.
    """
    module = type(connection).__module__
    if not module.startswith("psycopg"):
        return False
    try:  # psycopg 3: connection.pgconn.socket; psycopg2: connection.fileno()
        pgconn = getattr(connection, "pgconn", None)
        fileno = pgconn.socket if pgconn is not None else connection.fileno()
    except Exception:
        return False
    return peek_first_byte(fileno) in _ENDED


#: What ``peek_first_byte`` returns when nothing waits to be read.
NOTHING: Final = b"nothing"


def peek_first_byte(fileno: int) -> bytes:
    """The first byte waiting on socket ``fileno``, left there: ``b""`` for EOF (or a
    reset), ``NOTHING`` when nothing waits (or ``fileno`` is no socket).

    Through a socket object of its own on the descriptor, with no timeout, so
    the driver's socket timeout cannot turn the peek into a wait; the
    descriptor stays the driver's.
    """
    try:
        probe = socket.socket(fileno=fileno)
    except (OSError, ValueError):
        return NOTHING
    try:
        return probe.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return NOTHING  # nothing to read: open
    except OSError:
        return b""  # reset by the server
    finally:
        probe.detach()
