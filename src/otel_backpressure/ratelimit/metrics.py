"""Rate-limit metering: local counts on the hot path, exported by asynchronous instruments.

A synchronous SDK counter costs microseconds per call; a decision here costs
about one. So a decision only bumps a local integer, and the four
instruments of the telemetry contract read the counts when the SDK collects.
One ``RateLimitMetrics`` exists per ``MeterProvider`` (``for_provider``), so
the rate limiter and the ``limits`` library's metering add to the same
``backpressure.rate_limit.requests`` series.

Example::

    from otel_backpressure.ratelimit.metrics import RateLimitMetrics

    metrics = RateLimitMetrics.for_provider(meter_provider)   # None: the global one
    metrics.record("per-second", "allowed")
    allowed = metrics.counter("per-second", "allowed")        # pre-resolved, cheaper
    allowed.add()
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import ClassVar, Final, Protocol

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from otel_backpressure._shared import get_meter

__all__ = [
    "EVICTION_REASONS",
    "RESULTS",
    "Count",
    "KeyCounter",
    "RateLimitMetrics",
    "StoreCounts",
]

_logger = logging.getLogger(__name__)

POLICY: Final = "backpressure.rate_limit.policy"
RESULT: Final = "backpressure.rate_limit.result"
EVICTION_REASON: Final = "backpressure.rate_limit.eviction.reason"
ERROR_TYPE: Final = "error.type"

RESULTS: Final = ("allowed", "rejected", "dry_run_rejected")
EVICTION_REASONS: Final = ("idle", "capacity")


class Count:
    """One integer that any thread may add to (``count.add()``); read ``value``.

    Its own lock makes the addition exact from any number of threads, with or
    without the GIL; a reader of ``value`` sees some recent total.
    """

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, amount: int = 1) -> None:
        # acquire/release rather than ``with``: half the cost, on every decision
        lock = self._lock
        lock.acquire()
        try:
            self.value += amount
        finally:
            lock.release()

    def __repr__(self) -> str:
        return f"Count({self.value})"


class StoreCounts:
    """A store's evictions and errors, kept by the store and read by every watcher.

    Held apart from the store so that the counts outlive it: a cumulative
    counter must not drop when a store is garbage-collected.
    """

    __slots__ = ("_lock", "errors", "evictions")

    def __init__(self) -> None:
        # (policy name, reason) -> keys evicted
        self.evictions: dict[tuple[str, str], int] = {}
        # (policy name, error.type) -> errors
        self.errors: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def evicted(self, policy_name: str, reason: str, count: int = 1) -> None:
        key = (policy_name, reason)
        with self._lock:
            self.evictions[key] = self.evictions.get(key, 0) + count

    def failed(self, policy_name: str, error_type: str) -> None:
        key = (policy_name, error_type)
        with self._lock:
            self.errors[key] = self.errors.get(key, 0) + 1

    def __repr__(self) -> str:
        return f"StoreCounts(evictions={self.evictions!r}, errors={self.errors!r})"


class KeyCounter(Protocol):
    """A store that can say how many keys it holds per policy (the in-memory one)."""

    counts: StoreCounts

    def key_counts(self) -> Iterable[tuple[str, int]]: ...


class RateLimitMetrics:
    """The rate-limit instruments of one ``MeterProvider`` over local counts."""

    _registry: ClassVar[weakref.WeakKeyDictionary[object, RateLimitMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        provider = meter_provider or otel_metrics.get_meter_provider()
        self._lock = threading.Lock()
        # (policy name, result) -> count, shared by every caller of record()
        self._requests: dict[tuple[str, str], Count] = {}
        # (policy name, result) -> the counts that owners keep (owned_counts)
        self._owned: dict[tuple[str, str], list[Count]] = {}
        # owners' counts to fold into the shared ones: appended by a finalizer,
        # which may run inside a locked section of this very thread
        self._retired: collections.deque[tuple[str, tuple[Count, Count, Count]]] = (
            collections.deque()
        )
        # stores' counts outlive the stores (cumulative counters never drop)
        self._store_counts: dict[int, StoreCounts] = {}
        # key counts are current state: a collected store simply stops reporting
        self._key_sources: weakref.WeakSet[KeyCounter] = weakref.WeakSet()
        meter = get_meter(provider)
        meter.create_observable_counter(
            "backpressure.rate_limit.requests",
            callbacks=[self._observe_requests],
            unit="{request}",
            description="Rate-limit decisions by deciding policy and result.",
        )
        meter.create_observable_up_down_counter(
            "backpressure.rate_limit.keys",
            callbacks=[self._observe_keys],
            unit="{key}",
            description="Keys currently held by in-memory rate-limit stores.",
        )
        meter.create_observable_counter(
            "backpressure.rate_limit.evictions",
            callbacks=[self._observe_evictions],
            unit="{key}",
            description="Keys evicted from in-memory rate-limit stores, by reason.",
        )
        meter.create_observable_counter(
            "backpressure.rate_limit.store.errors",
            callbacks=[self._observe_errors],
            unit="{error}",
            description="Decisions a rate-limit store could not make (failed open or closed).",
        )

    @classmethod
    def for_provider(cls, meter_provider: MeterProvider | None = None) -> RateLimitMetrics:
        """The one instance for this provider (None: the global provider), created once."""
        provider: object = meter_provider or otel_metrics.get_meter_provider()
        with cls._registry_lock:
            try:
                existing = cls._registry.get(provider)
            except TypeError:  # not weak-referenceable: no caching possible
                return cls(meter_provider)
            if existing is None:
                existing = cls(meter_provider)
                cls._registry[provider] = existing
            return existing

    def counter(self, policy_name: str, result: str) -> Count:
        """The count for one series, created on first use; hold it to skip the lookup."""
        count = self._requests.get((policy_name, result))
        if count is None:
            if result not in RESULTS:
                raise ValueError(f"result must be one of {RESULTS}, got {result!r}")
            with self._lock:
                count = self._requests.setdefault((policy_name, result), Count())
        return count

    def record(self, policy_name: str, result: str) -> None:
        """Count one decision; safe from several threads."""
        self.counter(policy_name, result).add()

    def owned_counts(self, policy_name: str, owner: object) -> tuple[Count, Count, Count]:
        """Fresh (allowed, rejected, dry run rejected) counts of one policy, for ``owner``.

        Exported summed with every other count of the same series. The owner
        adds to them under a lock of its own (``count.value += 1``; a rate
        limiter, under its store's lock), which makes them exact without a
        lock per decision. When ``owner`` is garbage-collected, their totals
        move to the shared counts: a cumulative series never drops.
        """
        counts = (Count(), Count(), Count())
        with self._lock:
            self._fold_retired()
            for result, count in zip(RESULTS, counts, strict=True):
                self._owned.setdefault((policy_name, result), []).append(count)
        weakref.finalize(owner, self._retired.append, (policy_name, counts))
        return counts

    def _fold_retired(self) -> None:
        """Move the counts of collected owners into the shared ones (holding the lock)."""
        while self._retired:
            policy_name, counts = self._retired.popleft()
            for result, count in zip(RESULTS, counts, strict=True):
                key = (policy_name, result)
                self._requests.setdefault(key, Count()).add(count.value)
                self._owned[key].remove(count)

    def watch(self, store: object) -> None:
        """Export a store's evictions, errors and (in-memory stores) key counts."""
        counts = getattr(store, "counts", None)
        if isinstance(counts, StoreCounts):
            with self._lock:
                self._store_counts[id(counts)] = counts
        if callable(getattr(store, "key_counts", None)):
            self._key_sources.add(store)  # type: ignore[arg-type]

    # -- observable callbacks: never raise into the SDK --

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            totals: dict[tuple[str, str], int] = {}
            with self._lock:  # a retired owner's counts move in one step
                self._fold_retired()
                for key, count in self._requests.items():
                    totals[key] = count.value
                for key, owned in self._owned.items():
                    totals[key] = totals.get(key, 0) + sum(count.value for count in owned)
            return [
                Observation(value, {POLICY: policy, RESULT: result})
                for (policy, result), value in totals.items()
            ]
        except Exception:
            _logger.exception("Failed to observe backpressure.rate_limit.requests")
            return []

    def _observe_keys(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            totals: dict[str, int] = {}
            for store in list(self._key_sources):
                for policy, keys in store.key_counts():
                    totals[policy] = totals.get(policy, 0) + keys
            return [Observation(keys, {POLICY: policy}) for policy, keys in totals.items()]
        except Exception:
            _logger.exception("Failed to observe backpressure.rate_limit.keys")
            return []

    def _summed(self, attribute: str, which: str) -> Iterator[Observation]:
        totals: dict[tuple[str, str], int] = {}
        for counts in list(self._store_counts.values()):
            for key, value in list(getattr(counts, which).items()):
                totals[key] = totals.get(key, 0) + value
        for (policy, label), value in totals.items():
            yield Observation(value, {POLICY: policy, attribute: label})

    def _observe_evictions(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            return list(self._summed(EVICTION_REASON, "evictions"))
        except Exception:
            _logger.exception("Failed to observe backpressure.rate_limit.evictions")
            return []

    def _observe_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            return list(self._summed(ERROR_TYPE, "errors"))
        except Exception:
            _logger.exception("Failed to observe backpressure.rate_limit.store.errors")
            return []

    def __repr__(self) -> str:
        with self._lock:
            total = sum(count.value for count in self._requests.values()) + sum(
                count.value for owned in self._owned.values() for count in owned
            )
            series = len(self._requests.keys() | self._owned.keys())
        return f"RateLimitMetrics(series={series}, decisions={total})"
