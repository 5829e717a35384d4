"""``RateLimiter``: policies + a store + metering, one core for sync and async callers.

Example::

    from otel_backpressure.ratelimit import Policy, RateLimiter

    limiter = RateLimiter([
        Policy("per-second", rate=10, period=1.0, burst=20),
        Policy("per-minute", rate=300, period=60.0),
    ])
    decision = await limiter.hit("client-42")        # any store
    decision = limiter.hit_sync("client-42")         # the in-memory store, no loop needed
    if not decision.allowed:
        retry_in = decision.retry_after              # seconds
    await limiter.check("client-42")                 # raises RateLimitExceededError
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

from opentelemetry.metrics import MeterProvider, NoOpMeterProvider

from otel_backpressure._shared import check_meter_provider
from otel_backpressure.ratelimit import gcra
from otel_backpressure.ratelimit._checks import MAX_COUNT, check_whole
from otel_backpressure.ratelimit._fields import RateLimitFields
from otel_backpressure.ratelimit.gcra import NS_PER_SECOND
from otel_backpressure.ratelimit.memory import MemoryStore
from otel_backpressure.ratelimit.metrics import Count, RateLimitMetrics
from otel_backpressure.ratelimit.policy import Decision, Policy
from otel_backpressure.ratelimit.redis import RedisStore
from otel_backpressure.settings import Settings

__all__ = ["RateLimiter"]

# a Decision from its fields without NamedTuple's Python-level __new__ (as the
# memory store builds its own)
_decision = tuple.__new__


class _PolicySet(NamedTuple):
    """A policy set resolved once: its store tables (in memory) and metric counts."""

    policies: tuple[Policy, ...]
    tables: tuple[dict[str, int], ...]
    # per policy, the (allowed, rejected) counts to add to when enforcing...
    enforced: tuple[tuple[Count, Count], ...]
    # ...and in a dry run
    dry_run: tuple[tuple[Count, Count], ...]


def _check_policies(policies: Sequence[Policy], argument: str) -> tuple[Policy, ...]:
    if isinstance(policies, (str, Policy)) or not isinstance(policies, Sequence):
        raise TypeError(f"{argument} must be a sequence of Policy, got {policies!r}")
    checked = tuple(policies)
    if not checked:
        raise ValueError(f"{argument} must not be empty")
    for policy in checked:
        if not isinstance(policy, Policy):
            raise TypeError(f"{argument} must contain only Policy objects, got {policy!r}")
    if len({policy.name for policy in checked}) != len(checked):
        raise ValueError(f"{argument} must not repeat a policy name: {checked!r}")
    return checked


class RateLimiter:
    """Decides per key under every policy, all or nothing, and meters each decision.

    A request rejected by any policy is rejected and consumes nothing under
    any of them. ``dry_run=True`` decides and meters exactly the same way but
    counts rejections as ``dry_run_rejected``; the caller does not enforce
    them, and since a rejection never consumes, a dry run changes no state
    that enforcement would not have changed.

    Arguments:

    - ``policies``: a non-empty sequence of ``Policy`` with distinct names,
      applied to every call that names no policies of its own.
    - ``store``: a ``MemoryStore`` or a ``RedisStore``; default a new
      ``MemoryStore`` with its settings from the environment.
    - ``meter_provider``: where the decisions are metered; default the
      global one.
    - ``clock``: a callable returning monotonic seconds, for the default
      store (tests); with a ``store`` given, the store keeps the time.

    Raises ``TypeError`` for policies that are not a sequence of ``Policy``, a
    store of another kind or a ``meter_provider`` without ``get_meter``, and
    ``ValueError`` for no policies, a repeated policy name or a ``clock``
    given with a ``store``. A default store's
    settings come from the environment, where a bad value is logged and its
    default used, so building a limiter never fails on the environment.
    """

    __slots__ = (
        "__weakref__",
        "_counters",
        "_default_set",
        "_lock",
        "_memory",
        "_metrics",
        "_policies",
        "_redis",
        "_resolved",
        "_store",
    )

    def __init__(
        self,
        policies: Sequence[Policy],
        *,
        store: MemoryStore | RedisStore | None = None,
        meter_provider: MeterProvider | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._policies = _check_policies(policies, "policies")
        check_meter_provider(meter_provider)
        if store is None:
            store = MemoryStore(clock=clock)
        elif not isinstance(store, (MemoryStore, RedisStore)):
            raise TypeError(f"store must be a MemoryStore or RedisStore, got {store!r}")
        elif clock is not None and store.clock is not clock:
            raise ValueError(
                "clock: the store keeps the time; pass the clock to the store "
                "(MemoryStore(clock=...)) or leave store unset"
            )
        self._store = store
        self._memory = store if isinstance(store, MemoryStore) else None
        self._redis = store if isinstance(store, RedisStore) else None
        if Settings.from_env().rate_limit_enabled:
            self._metrics = RateLimitMetrics.for_provider(meter_provider)
        else:  # OTEL_PYTHON_BACKPRESSURE_RATE_LIMIT_ENABLED=false: limit, export nothing
            self._metrics = RateLimitMetrics(NoOpMeterProvider())
        self._metrics.watch(store)
        # guards the counts of decisions made on Redis (the memory store counts
        # its decisions under its own lock) and the caches below
        self._lock = threading.Lock()
        # policy -> its three counts (allowed, rejected, dry run rejected),
        # this limiter's own: exact, since one lock guards each
        self._counters: dict[Policy, tuple[Count, Count, Count]] = {}
        self._default_set = self._resolve(self._policies)
        # per-call policy tuples (the middleware's per-route sets), by identity:
        # id -> (the tuple itself, kept alive so its id is not reused; its set)
        self._resolved: dict[int, tuple[tuple[Policy, ...], _PolicySet]] = {}

    @property
    def policies(self) -> tuple[Policy, ...]:
        return self._policies

    @property
    def store(self) -> MemoryStore | RedisStore:
        return self._store

    @property
    def metrics(self) -> RateLimitMetrics:
        return self._metrics

    def _counts_for(self, policy: Policy) -> tuple[Count, Count, Count]:
        counts = self._counters.get(policy)
        if counts is None:
            counts = self._counters[policy] = self._metrics.owned_counts(policy.name, self)
        return counts

    def _resolve(self, policies: tuple[Policy, ...]) -> _PolicySet:
        memory = self._memory
        tables = () if memory is None else tuple(memory.table(policy) for policy in policies)
        with self._lock:
            counts = [self._counts_for(policy) for policy in policies]
        return _PolicySet(
            policies,
            tables,
            tuple((allowed, rejected) for allowed, rejected, _ in counts),
            tuple((allowed, dry_run) for allowed, _, dry_run in counts),
        )

    def _arguments(self, key: str, policies: Sequence[Policy] | None, cost: int) -> _PolicySet:
        if type(key) is not str:
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        if policies is None:
            chosen = self._default_set
        else:
            cached = self._resolved.get(id(policies))
            if cached is not None and cached[0] is policies:
                chosen = cached[1]
            else:
                chosen = self._resolve(_check_policies(policies, "policies"))
                # only tuples can be trusted not to change; a few route sets at most
                if type(policies) is tuple and len(self._resolved) < 256:
                    self._resolved[id(policies)] = (policies, chosen)
        if cost != 1 or type(cost) is not int:
            check_whole("cost", cost, 1, MAX_COUNT)
            for policy in chosen.policies:
                if cost > policy.burst:
                    raise ValueError(
                        f"cost must not exceed the burst of policy {policy.name!r} "
                        f"({cost} > {policy.burst}): such a request could never be allowed"
                    )
        return chosen

    def _counted(self, verdict: gcra.Verdict, chosen: _PolicySet, dry_run: bool) -> Decision:
        """A Redis verdict as a ``Decision``, counted like the memory store counts its own."""
        allowed, deciding, remaining, retry_after, reset_after, _ = verdict
        counts = (chosen.dry_run if dry_run else chosen.enforced)[deciding]
        with self._lock:
            counts[0 if allowed else 1].value += 1
        return _decision(
            Decision,
            (
                allowed,
                chosen.policies[deciding],
                remaining,
                retry_after / NS_PER_SECOND,
                reset_after / NS_PER_SECOND,
            ),
        )

    def hit_sync(
        self,
        key: str,
        *,
        policies: Sequence[Policy] | None = None,
        cost: int = 1,
        dry_run: bool = False,
    ) -> Decision:
        """Decide one request without an event loop; in-memory store only, thread-safe.

        ``policies`` replace the limiter's own for this call (a route's set);
        ``cost`` (int, requests, at most every policy's burst) is what the
        request spends. Raises ``TypeError`` on a ``RedisStore`` (use
        ``await hit``), for a key that is not a str or bad ``policies``, and
        ``ValueError`` for a ``cost`` out of range.
        """
        memory = self._memory
        if memory is None:
            raise TypeError(
                f"hit_sync needs a MemoryStore; this limiter's store is "
                f"{type(self._store).__name__}, use `await limiter.hit(...)`"
            )
        if policies is None and cost == 1 and type(cost) is int and type(key) is str:
            chosen = self._default_set  # the common call, with nothing to check
        else:
            chosen = self._arguments(key, policies, cost)
        return memory.decide(
            key,
            chosen.policies,
            cost,
            chosen.tables,
            chosen.dry_run if dry_run else chosen.enforced,
        )

    async def hit(
        self,
        key: str,
        *,
        policies: Sequence[Policy] | None = None,
        cost: int = 1,
        dry_run: bool = False,
    ) -> Decision:
        """Decide one request on any store."""
        memory = self._memory
        if memory is not None:
            memory.ensure_cleanup()
            return self.hit_sync(key, policies=policies, cost=cost, dry_run=dry_run)
        if policies is None and cost == 1 and type(cost) is int and type(key) is str:
            chosen = self._default_set  # the common call, with nothing to check
        else:
            chosen = self._arguments(key, policies, cost)
        redis_store = self._redis
        if redis_store is None:  # unreachable: the constructor accepts only the two stores
            raise TypeError(f"unsupported store {self._store!r}")
        verdict = await redis_store.decide(key, chosen.policies, cost)
        return self._counted(verdict, chosen, dry_run)

    async def check(
        self,
        key: str,
        *,
        policies: Sequence[Policy] | None = None,
        cost: int = 1,
    ) -> Decision:
        """``hit``, raising ``RateLimitExceededError`` on rejection (mapped to a 429).

        The error carries the deciding policy's name, ``retry_after`` and the
        IETF ``RateLimit`` header fields, so ``ErrorMappingMiddleware`` answers
        exactly as ``RateLimitMiddleware`` does.

        Example::

            try:
                await limiter.check(user_id)
            except RateLimitExceededError as exc:
                ...  # exc.retry_after seconds, exc.policy the policy name
        """
        decision = await self.hit(key, policies=policies, cost=cost)
        if not decision.allowed:
            from otel_backpressure.errors import RateLimitExceededError

            fields = RateLimitFields(self._policies if policies is None else policies)
            raise RateLimitExceededError(
                policy=decision.policy.name,
                retry_after=decision.retry_after,
                headers=[
                    (name.decode(), value.decode()) for name, value in fields.headers(decision)
                ],
            )
        return decision

    def __repr__(self) -> str:
        names = ", ".join(policy.name for policy in self._policies)
        return f"RateLimiter(policies=[{names}], store={self._store!r})"
