"""What the demo exports, read back through an in-process metric reader.

The same instruments feed the OTLP exporter and this reader, so the terminal
shows the numbers a collector receives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

__all__ = ["DemoSummary", "Snapshot", "read_snapshot"]

POOL_NAME = "db.client.connection.pool.name"
POLICY = "backpressure.rate_limit.policy"
RESULT = "backpressure.rate_limit.result"
ERROR_TYPE = "error.type"
OUTCOME = "backpressure.exception.outcome"

Points = list[tuple[dict[str, Any], Any]]


class Snapshot:
    """One collection: metric name -> [(attributes, value or histogram point)]."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: dict[str, Points]) -> None:
        self._metrics = metrics

    def points(self, name: str) -> Points:
        return self._metrics.get(name, [])

    def by(self, name: str, key: str, **match: str) -> dict[str, float]:
        """Values of ``name`` summed per value of attribute ``key``, over points matching."""
        totals: dict[str, float] = {}
        for attributes, value in self.points(name):
            if any(attributes.get(k) != v for k, v in match.items()):
                continue
            label = str(attributes.get(key, "?"))
            amount = value.count if isinstance(value, HistogramDataPoint) else value
            totals[label] = totals.get(label, 0) + amount
        return totals

    def histograms(self, name: str) -> dict[str, HistogramDataPoint]:
        return {
            str(attributes.get(POOL_NAME, "?")): value
            for attributes, value in self.points(name)
            if isinstance(value, HistogramDataPoint)
        }


def read_snapshot(reader: InMemoryMetricReader) -> Snapshot:
    data = reader.get_metrics_data()
    metrics: dict[str, Points] = {}
    if data is None:
        return Snapshot(metrics)
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                bucket = metrics.setdefault(metric.name, [])
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint):
                        bucket.append((dict(point.attributes or {}), point))
                    elif isinstance(point, NumberDataPoint):
                        bucket.append((dict(point.attributes or {}), point.value))
    return Snapshot(metrics)


def quantile(point: HistogramDataPoint, q: float) -> float:
    """Upper bound of the bucket holding the q-quantile, as a dashboard's estimate shows it."""
    if point.count == 0:
        return 0.0
    rank = q * point.count
    seen = 0
    for index, count in enumerate(point.bucket_counts):
        seen += count
        if seen >= rank:
            bounds = point.explicit_bounds
            return float(bounds[index]) if index < len(bounds) else float(point.max)
    return float(point.max)


@dataclass
class PoolPeaks:
    usage: float = 0.0
    overflow: float = 0.0
    pending: float = 0.0
    used: float = 0.0
    max: float = math.nan


@dataclass
class DemoSummary:
    """Running totals for the terminal and the final report (also written as JSON)."""

    pools: dict[str, PoolPeaks] = field(default_factory=dict)
    latest: Snapshot = field(default_factory=lambda: Snapshot({}))

    def update(self, snapshot: Snapshot) -> None:
        self.latest = snapshot
        for name, usage in snapshot.by("backpressure.pool.usage", POOL_NAME).items():
            self._peaks(name).usage = max(self._peaks(name).usage, usage)
        for name, overflow in snapshot.by("backpressure.pool.overflow", POOL_NAME).items():
            self._peaks(name).overflow = max(self._peaks(name).overflow, overflow)
        pending = snapshot.by("db.client.connection.pending_requests", POOL_NAME)
        for name, waiting in pending.items():
            self._peaks(name).pending = max(self._peaks(name).pending, waiting)
        used = snapshot.by("db.client.connection.count", POOL_NAME, **{
            "db.client.connection.state": "used"
        })  # fmt: skip
        for name, count in used.items():
            self._peaks(name).used = max(self._peaks(name).used, count)
        for name, most in snapshot.by("db.client.connection.max", POOL_NAME).items():
            self._peaks(name).max = most

    def _peaks(self, pool: str) -> PoolPeaks:
        return self.pools.setdefault(pool, PoolPeaks())

    def timeouts(self) -> dict[str, float]:
        return self.latest.by("db.client.connection.timeouts", POOL_NAME)

    def rate_limits(self) -> dict[str, dict[str, float]]:
        """policy -> result -> count."""
        table: dict[str, dict[str, float]] = {}
        for attributes, value in self.latest.points("backpressure.rate_limit.requests"):
            policy = str(attributes.get(POLICY, "?"))
            result = str(attributes.get(RESULT, "?"))
            table.setdefault(policy, {}).setdefault(result, 0)
            table[policy][result] += value
        return table

    def store_errors(self) -> dict[str, dict[str, float]]:
        """policy -> error.type -> decisions its store could not make (failed open)."""
        table: dict[str, dict[str, float]] = {}
        for attributes, value in self.latest.points("backpressure.rate_limit.store.errors"):
            policy = str(attributes.get(POLICY, "?"))
            error_type = str(attributes.get(ERROR_TYPE, "?"))
            table.setdefault(policy, {}).setdefault(error_type, 0)
            table[policy][error_type] += value
        return table

    def exceptions(self) -> dict[str, dict[str, float]]:
        """error.type -> outcome -> count."""
        table: dict[str, dict[str, float]] = {}
        for attributes, value in self.latest.points("backpressure.exceptions"):
            error_type = str(attributes.get(ERROR_TYPE, "?"))
            outcome = str(attributes.get(OUTCOME, "?"))
            table.setdefault(error_type, {}).setdefault(outcome, 0)
            table[error_type][outcome] += value
        return table

    def report(self) -> list[str]:
        """The final summary, one fact per line."""
        lines = []
        timeouts = self.timeouts()
        waits = self.latest.histograms("db.client.connection.wait_time")
        for pool, peaks in sorted(self.pools.items()):
            wait = waits.get(pool)
            wait_text = (
                f" wait p50 {quantile(wait, 0.5):.3f}s p95 {quantile(wait, 0.95):.3f}s"
                if wait is not None
                else ""
            )
            most = "unbounded" if math.isnan(peaks.max) else f"{peaks.max:.0f}"
            lines.append(
                f"pool {pool}: max {most} peak_used={peaks.used:.0f} "
                f"peak_usage={peaks.usage:.0%} peak_overflow={peaks.overflow:.0f} "
                f"peak_pending={peaks.pending:.0f} timeouts={timeouts.get(pool, 0):.0f}{wait_text}"
            )
        for policy, results in sorted(self.rate_limits().items()):
            counts = " ".join(f"{result}={n:.0f}" for result, n in sorted(results.items()))
            lines.append(f"rate limit {policy}: {counts}")
        for policy, errors in sorted(self.store_errors().items()):
            counts = " ".join(f"{kind}={n:.0f}" for kind, n in sorted(errors.items()))
            lines.append(f"rate limit store errors {policy}: {counts}")
        for error_type, outcomes in sorted(self.exceptions().items()):
            counts = " ".join(f"{outcome}={n:.0f}" for outcome, n in sorted(outcomes.items()))
            lines.append(f"exceptions {error_type}: {counts}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "pools": {
                name: {
                    "max": None if math.isnan(peaks.max) else peaks.max,
                    "peak_used": peaks.used,
                    "peak_usage": peaks.usage,
                    "peak_overflow": peaks.overflow,
                    "peak_pending": peaks.pending,
                    "timeouts": self.timeouts().get(name, 0),
                }
                for name, peaks in self.pools.items()
            },
            "rate_limits": self.rate_limits(),
            "rate_limit_store_errors": self.store_errors(),
            "exceptions": self.exceptions(),
        }
