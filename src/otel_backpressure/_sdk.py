"""Hand many buffered durations to an SDK histogram at the cost of one sort per batch.

``Histogram.record()`` costs several microseconds per value (a ``Measurement``,
the exemplar filter, attribute hashing, locks). The pool, HTTP-pool and runtime
parts buffer their durations on the hot path and hand them over at collection
time; doing that through ``record()`` would only move the cost, not remove it.
So for the OpenTelemetry SDK's own explicit-bucket aggregation,
``HistogramSink`` adds the values straight into the aggregation that
``record()`` would have reached (same lock, same bucket rule, same
sum/min/max), giving an identical exported point. The first value of each
batch goes through ``record()`` so that the SDK itself creates the series with
every view, attribute filter and cardinality limit applied.

Anything else (another SDK, another aggregation such as the exponential
histogram, a future SDK whose internals moved) gets the public ``record()`` for
every value: slower, still exact. Exemplars are not sampled for the merged
values; they were measured outside any request context anyway.

Example::

    sink = HistogramSink(histogram, {"db.client.connection.pool.name": "db"})
    sink.record_many([0.002, 0.004])
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import operator
import sys
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from opentelemetry.metrics import Histogram

__all__ = ["HistogramSink"]

_logger = logging.getLogger(__name__)


class _Internals(NamedTuple):
    histogram: type[Any]
    drop: type[Any]
    explicit: type[Any]
    hash_attributes: Callable[[Mapping[str, Any]], Any] | None  # SDK 1.4x keys by a hash


@functools.cache
def _internals() -> _Internals | None:
    """The SDK classes the fast path relies on, or None if they are not all there.

    Only consulted for a histogram that already exists, so the SDK is imported
    by then if that histogram is the SDK's: nothing is imported for us.
    """
    if "opentelemetry.sdk.metrics" not in sys.modules:
        return None
    try:
        from opentelemetry.sdk.metrics._internal import _view_instrument_match
        from opentelemetry.sdk.metrics._internal.aggregation import (
            _DropAggregation,
            _ExplicitBucketHistogramAggregation,
        )
        from opentelemetry.sdk.metrics._internal.instrument import _Histogram
    except ImportError:  # pragma: no cover - depends on the installed SDK
        return None
    return _Internals(
        _Histogram,
        _DropAggregation,
        _ExplicitBucketHistogramAggregation,
        getattr(_view_instrument_match, "_hash_attributes", None),
    )


class HistogramSink:
    """One histogram series (instrument + attributes) fed in batches."""

    __slots__ = ("_attributes", "_fast", "_histogram", "_keys")

    def __init__(self, histogram: Histogram, attributes: Mapping[str, Any]) -> None:
        self._histogram = histogram
        self._attributes = dict(attributes)
        internals = _internals()
        self._fast = internals is not None and isinstance(histogram, internals.histogram)
        # per view match: the attributes it keeps and their aggregation key, which
        # never change for this series (hashing them was half a batch's fixed cost)
        self._keys: dict[Any, tuple[Any, dict[str, Any]]] = {}

    @property
    def fast(self) -> bool:
        """Whether values are merged into the SDK aggregation directly."""
        return self._fast

    def record_many(self, values: Sequence[float]) -> None:
        if not values:
            return
        if self._fast:
            try:
                merged = self._merge_all(values)
                if not merged:
                    # the series is not there yet: record() makes it, with every view,
                    # attribute filter and cardinality limit applied, from the first value
                    self._histogram.record(values[0], self._attributes)
                    values = values[1:]
                    merged = not values or self._merge_all(values)
            except Exception:
                _logger.debug("SDK histogram internals differ; using record()", exc_info=True)
                merged = False
            if merged:
                return
            self._fast = False
        record = self._histogram.record
        for value in values:
            record(value, self._attributes)

    def _merge_all(self, values: Sequence[float]) -> bool:
        """Add ``values`` to every aggregation ``record()`` reaches; False (nothing added)
        when one of them does not exist yet or is not the explicit-bucket kind."""
        aggregations = self._aggregations()
        if aggregations is None:
            return False
        if aggregations:
            _merge(aggregations, values)
        return True

    def _aggregations(self) -> list[tuple[Any, Any, dict[str, Any], Any]] | None:
        """Every (view match, key, attributes, aggregation) ``record()`` reaches; None if one is
        missing (no value recorded yet) or of another kind (then ``_fast`` is dropped)."""
        internals = _internals()
        assert internals is not None  # self._fast is only True when they were found
        histogram: Any = self._histogram
        if hasattr(histogram, "_is_enabled") and not histogram._is_enabled():
            return []  # record() would drop the values as well
        found = []
        consumer = histogram._measurement_consumer
        for storage in consumer._reader_storages.values():
            matches = storage._instrument_view_instrument_matches.get(histogram)
            if matches is None:
                return None  # this reader has never seen the histogram: record() sets it up
            for match in matches:
                known = self._keys.get(match)
                if known is None:
                    known = self._keys[match] = self._key(internals, match)
                    if len(self._keys) > _MAX_MATCHES:  # matches replaced: forget the old ones
                        self._keys = {match: known}
                key, attributes = known
                get_or_create = getattr(match, "_get_or_create_aggregation", None)
                with match._lock:
                    if get_or_create is not None:  # as record() does, cardinality limit included
                        aggregation = get_or_create(key, attributes)
                    else:
                        aggregation = match._attributes_aggregation.get(key)
                if aggregation is None:
                    return None
                if isinstance(aggregation, internals.drop):
                    continue
                if type(aggregation) is not internals.explicit:
                    self._fast = False
                    return None
                found.append((match, key, attributes, aggregation))
        return found

    def _key(self, internals: _Internals, match: Any) -> tuple[Any, dict[str, Any]]:
        """The aggregation key and attributes ``record()`` would use under ``match``'s view."""
        attributes = dict(self._attributes)
        keys = match._view._attribute_keys
        if keys is not None:
            attributes = {k: v for k, v in attributes.items() if k in keys}
        # the aggregation table's key: a hash of the attributes in newer SDKs, their
        # items before
        key = (
            internals.hash_attributes(attributes)
            if internals.hash_attributes is not None
            else frozenset(attributes.items())
        )
        return key, attributes


#: View matches remembered per series (one per reader and matching view, in practice 1-3).
_MAX_MATCHES: Final = 32


def _bucket_counts(ordered: Sequence[float], boundaries: Sequence[float]) -> list[int]:
    """How many of the sorted ``ordered`` fall in each bucket: the first whose boundary
    is >= the value (the SDK's rule)."""
    edges = list(map(functools.partial(bisect_right, ordered), boundaries))
    return list(map(operator.sub, [*edges, len(ordered)], [0, *edges]))


# Up to 3.11 sum() adds floats one by one in order, as record() does; from 3.12 on it
# compensates (Neumaier), which can change the last bits, so the sum is then
# accumulated explicitly (still in C, about ten times sum()'s cost per value).
_SUM_IS_SEQUENTIAL: Final = sys.version_info < (3, 12)


def _add_in_order(total: float, values: Sequence[float]) -> float:
    """``total + values[0] + values[1] + ...``, left to right, as ``record()`` adds."""
    if _SUM_IS_SEQUENTIAL:
        return sum(values, total)
    return deque(itertools.accumulate(values, initial=total), maxlen=1)[0]


def _merge(
    aggregations: list[tuple[Any, Any, dict[str, Any], Any]], values: Sequence[float]
) -> None:
    """What ``aggregate()`` does per value, for a batch; the same arithmetic, in order.

    Everything per value runs in C: one sort gives the minimum, the maximum and
    every bucket count (a bisect per boundary), and the sum is added in arrival
    order.
    """
    # an inf or nan among them (record() skips those) makes the plain sum non-finite;
    # so does an overflow of finite values, and then filtering changes nothing
    if not math.isfinite(sum(values)):
        values = [value for value in values if math.isfinite(value)]
        if not values:
            return
    ordered = sorted(values)
    low, high = ordered[0], ordered[-1]
    batches: dict[tuple[float, ...], list[int]] = {}
    for match, key, attributes, found in aggregations:
        boundaries = tuple(found._boundaries)
        batch = batches.get(boundaries)
        if batch is None:
            batch = batches[boundaries] = _bucket_counts(ordered, boundaries)
        # The view match's lock is held as record() holds it, so a delta
        # collection cannot discard the aggregation halfway through. An SDK whose
        # delta collection drops its aggregations may have done so since the
        # lookup: asked again under the lock, as record() asks.
        with match._lock:
            get_or_create = getattr(match, "_get_or_create_aggregation", None)
            aggregation = get_or_create(key, attributes) if get_or_create is not None else found
            with aggregation._lock:
                if aggregation._value is None:
                    aggregation._value = aggregation._get_empty_bucket_counts()
                counts = aggregation._value
                counts[:] = map(operator.add, counts, batch)
                aggregation._sum = _add_in_order(aggregation._sum, values)
                if aggregation._record_min_max:
                    aggregation._min = min(aggregation._min, low)
                    aggregation._max = max(aggregation._max, high)
