"""A pool's health for a status endpoint, a bounded history, and a monitor task.

The snapshot is the same ``PoolReading`` the metrics export, with a status:
everything is read from the pool itself (capacity included), and reading has
no side effects: only ``PoolHealth.record()`` (and the monitor, which calls
it) adds to the history.

Example::

    from otel_backpressure import PoolHealth, pool_health

    pool_health(engine)
    # {"status": "healthy", "pool_name": "db:5432/app", "in_use": 1, "available": 2,
    #  "pending": 0, "timeouts": 0, "total_capacity": 15, "idle_max": 5, "idle_min": 0,
    #  "overflow_active": 0, "usage_percent": 6.7,
    #  "timestamp": "2026-11-27T00:35:00.000000+00:00"}

    health = PoolHealth(engine, max_history=100)
    task = health.start_monitor(interval=60)   # records, warns past the threshold
    health.history(limit=10)
    task.cancel()
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime, timezone
from typing import Any, Literal, TypedDict

from otel_backpressure.pool._kinds import targets
from otel_backpressure.pool._registry import REGISTRY
from otel_backpressure.pool._source import PoolReading
from otel_backpressure.settings import Settings, check_fraction, check_positive

__all__ = ["PoolHealth", "PoolHealthSnapshot", "pool_health"]

_logger = logging.getLogger(__name__)

HEALTHY: Literal["healthy"] = "healthy"
WARNING: Literal["warning"] = "warning"
CRITICAL: Literal["critical"] = "critical"


class PoolHealthSnapshot(TypedDict):
    """What ``pool_health()`` returns; each count is one field of the ``PoolReading``
    the metrics export, so the two never disagree. ``None``: not known for this
    kind of pool (the per-kind table in ``docs/pool.md``).
    """

    #: ``healthy`` below the warning threshold of ``usage_percent``, ``warning``
    #: from it, ``critical`` from the critical one; a pool without a known
    #: capacity or use is ``healthy``.
    status: Literal["healthy", "warning", "critical"]
    #: The name its series carry, or None when the pool is not instrumented.
    pool_name: str | None
    #: Open connections checked out now, {connection} (``count{state=used}``).
    in_use: int | None
    #: Open idle connections now, {connection} (``count{state=idle}``): connections
    #: ready to hand out, *not* free slots (a pool may open more, up to
    #: ``total_capacity``); a slot whose connection was lost is not counted.
    available: int | None
    #: Checkouts waiting for a connection now, {request}; 0 when not instrumented.
    pending: int
    #: Checkouts that timed out since instrumented, {timeout}; 0 when not instrumented.
    timeouts: int
    #: Most connections the pool opens, {connection} (``db.client.connection.max``);
    #: None when unbounded.
    total_capacity: int | None
    #: Most idle connections kept, {connection} (``idle.max``: SQLAlchemy's
    #: ``pool_size``, asyncpg's ``max_size``).
    idle_max: int | None
    #: Fewest idle connections kept, {connection} (``idle.min``: 0 for SQLAlchemy,
    #: asyncpg's ``min_size``).
    idle_min: int | None
    #: Connections open beyond the resting size, {connection} (``backpressure.pool.overflow``).
    overflow_active: int | None
    #: ``in_use / total_capacity`` in percent (0..100, one decimal); None when unbounded.
    usage_percent: float | None
    #: When it was read: timezone-aware UTC, ISO 8601.
    timestamp: str


def _thresholds(warning: float | None, critical: float | None) -> tuple[float, float]:
    if warning is None or critical is None:
        settings = Settings.from_env()
        warning = settings.pool_warning_threshold if warning is None else warning
        critical = settings.pool_critical_threshold if critical is None else critical
    warning = check_fraction("warning_threshold", warning)
    critical = check_fraction("critical_threshold", critical)
    if warning > critical:
        raise ValueError(
            f"warning_threshold must not exceed critical_threshold (got {warning} > {critical})"
        )
    return warning, critical


def _check_target(target: object) -> None:
    if not REGISTRY.knows(target):
        raise TypeError(f"target must be {targets(readable=True)}, got {type(target).__name__}")


def _status(
    usage: float | None, warning: float, critical: float
) -> Literal["healthy", "warning", "critical"]:
    if usage is None or usage < warning:
        return HEALTHY
    return WARNING if usage < critical else CRITICAL


def snapshot_of(
    name: str | None, reading: PoolReading, warning: float, critical: float
) -> PoolHealthSnapshot:
    """The health of one reading: a mapping of its fields, plus a status and a time."""
    usage = reading.usage
    return {
        "status": _status(usage, warning, critical),
        "pool_name": name,
        "in_use": reading.used,
        "available": reading.idle,
        "pending": reading.pending,
        "timeouts": reading.timeouts,
        "total_capacity": reading.max,
        "idle_max": reading.idle_max,
        "idle_min": reading.idle_min,
        "overflow_active": reading.overflow,
        "usage_percent": None if usage is None else round(usage * 100, 1),
        "timestamp": datetime.now(timezone.utc).isoformat(),
    }


def _snapshot(target: object, warning: float, critical: float) -> PoolHealthSnapshot:
    """Read the pool once; no state changes anywhere."""
    found = REGISTRY.reading(target)
    if found is None:  # checked by the callers; the pool kind stopped being known
        raise TypeError(f"cannot read a pool from {type(target).__name__}")
    return snapshot_of(*found, warning, critical)


def pool_health(
    target: Any,
    *,
    warning_threshold: float | None = None,
    critical_threshold: float | None = None,
) -> PoolHealthSnapshot:
    """The health of ``target``'s pool now (anything ``instrument()`` takes, or a bare
    SQLAlchemy ``Pool``; instrumented or not), as a ``PoolHealthSnapshot``.
    A thread pool (``anyio.CapacityLimiter``, ``ThreadPoolExecutor``) gives the
    same snapshot: threads or tokens in use, free ones as ``available``, calls
    waiting as ``pending`` (docs/runtime.md).

    ``healthy`` below the warning threshold, ``critical`` from the critical one;
    pools without a known capacity (unbounded) are always ``healthy``.
    Thresholds (0..1) default to
    ``OTEL_PYTHON_BACKPRESSURE_POOL_{WARNING,CRITICAL}_THRESHOLD`` (0.75 and
    0.9). Raises ``TypeError`` for a target that is no pool, ``ValueError``
    for a threshold outside 0..1 or a warning above the critical one.
    """
    from otel_backpressure.runtime import is_thread_pool, thread_pool_reading

    if is_thread_pool(target):  # the runtime part's seam: anyio limiters, executors
        warning, critical = _thresholds(warning_threshold, critical_threshold)
        name, used, bound, queue = thread_pool_reading(target)
        free = None if used is None or bound is None else bound - used
        reading = PoolReading(used=used, pending=queue, timeouts=0, idle=free, max=bound)
        return snapshot_of(name, reading, warning, critical)
    _check_target(target)
    warning, critical = _thresholds(warning_threshold, critical_threshold)
    return _snapshot(target, warning, critical)


class PoolHealth:
    """``pool_health()`` for one pool, plus a bounded history and a monitor task."""

    __slots__ = ("_critical", "_history", "_target", "_warning")

    def __init__(
        self,
        target: Any,
        *,
        warning_threshold: float | None = None,
        critical_threshold: float | None = None,
        max_history: int = 100,
    ) -> None:
        _check_target(target)
        if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
            raise ValueError(f"max_history must be a positive int, got {max_history!r}")
        self._target = target
        self._warning, self._critical = _thresholds(warning_threshold, critical_threshold)
        self._history: deque[PoolHealthSnapshot] = deque(maxlen=max_history)

    def snapshot(self) -> PoolHealthSnapshot:
        """The health now; does not touch the history."""
        return _snapshot(self._target, self._warning, self._critical)

    def record(self) -> PoolHealthSnapshot:
        """Take a snapshot and keep it in the history (oldest dropped past ``max_history``)."""
        snapshot = self.snapshot()
        self._history.append(snapshot)
        return snapshot

    def history(self, limit: int | None = None) -> list[PoolHealthSnapshot]:
        """The most recent recorded snapshots, oldest first."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
        items = list(self._history)
        if limit is None:
            return items
        return items[-limit:] if limit > 0 else []

    async def monitor(self, interval: float = 60.0) -> None:
        """Record every ``interval`` seconds until cancelled; warn when not healthy."""
        check_positive("interval", interval)
        _logger.info("Monitoring pool health every %ss", interval)
        while True:
            try:
                snapshot = self.record()
                if snapshot["status"] != HEALTHY:
                    _logger.warning(
                        "Connection pool %s is %s: %s%% in use (%s of %s)",
                        snapshot["pool_name"] or "(unnamed)",
                        snapshot["status"],
                        snapshot["usage_percent"],
                        snapshot["in_use"],
                        snapshot["total_capacity"],
                    )
            except Exception:
                _logger.exception("Pool health monitoring failed; retrying")
            await asyncio.sleep(interval)

    def start_monitor(self, interval: float = 60.0) -> asyncio.Task[None]:
        """Run ``monitor()`` as a task on the running loop; cancel it to stop."""
        check_positive("interval", interval)
        return asyncio.get_running_loop().create_task(self.monitor(interval))

    def __repr__(self) -> str:
        return (
            f"PoolHealth(warning={self._warning}, critical={self._critical}, "
            f"history={len(self._history)}/{self._history.maxlen})"
        )
