"""The Redis store: one Lua script, one round trip per decision, for many instances.

The script runs GCRA on the Redis server's clock (``TIME``), so instances
with skewed clocks agree. A client's state is one small string key per
policy, ``{prefix}{{client key}}:{policy}``: the braces make them one hash
tag, so all keys of a call live in one slot and the script runs on Redis
Cluster. Each key expires once its state is idle, so nothing needs sweeping.
It is sent with EVALSHA and re-loaded when the server answers NOSCRIPT (a
restarted or ``SCRIPT FLUSH``-ed server).

When Redis is unreachable or slower than ``timeout``, the decision fails
open (allowed; ``fail_open=False`` rejects instead), the error is counted in
``backpressure.rate_limit.store.errors``, and a circuit breaker stops asking
Redis for ``backoff`` seconds (doubling up to ``max_backoff`` while it stays
down), so the timeout is not added to every request. Decisions made while
the breaker is open count as ``error.type=circuit_open``.

Example::

    from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore

    store = RedisStore("redis://localhost:6379/0", prefix="myapp:rl:", timeout=0.05)
    limiter = RateLimiter([Policy("api", rate=100, period=60)], store=store)
    decision = await limiter.hit("client-42")
    await store.aclose()
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from importlib import resources
from types import TracebackType
from typing import Any, Final

from otel_backpressure._shared import type_name
from otel_backpressure.ratelimit import gcra
from otel_backpressure.ratelimit.metrics import StoreCounts
from otel_backpressure.ratelimit.policy import Policy
from otel_backpressure.settings import check_positive

__all__ = ["RedisStore"]

_logger = logging.getLogger(__name__)

_US: Final = 1_000_000
_NS_PER_US: Final = 1_000
CIRCUIT_OPEN: Final = "circuit_open"


def _load_script() -> str:
    return (
        resources.files("otel_backpressure.ratelimit")
        .joinpath("scripts/gcra.lua")
        .read_text(encoding="utf-8")
    )


def _policy_args(policy: Policy) -> tuple[str, int, int]:
    """(key suffix, interval in µs rounded up, burst) as the script reads them."""
    period_us = round(policy.period * _US)
    interval_us = max(1, -(-period_us // policy.rate))
    # the parameters are part of the key: a changed policy starts afresh
    suffix = f":{policy.name}|{policy.rate}/{policy.period:g}s|{policy.burst}"
    return suffix, interval_us, policy.burst


class RedisStore:
    """GCRA state in Redis, shared by every instance; see the module docstring."""

    __slots__ = (
        "_args",
        "_client",
        "_failures",
        "_no_script",
        "_open_until",
        "_owns_client",
        "_probing",
        "_sha",
        "_source",
        "_wait_for",
        "backoff",
        "clock",
        "counts",
        "fail_open",
        "max_backoff",
        "prefix",
        "timeout",
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = "backpressure:ratelimit:",
        timeout: float = 0.25,
        fail_open: bool = True,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("pass exactly one of url or client")
        if url is not None and not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must not contain braces (a hash tag), got {prefix!r}")
        self.timeout = check_positive("timeout", timeout)
        self.backoff = check_positive("backoff", backoff)
        self.max_backoff = check_positive("max_backoff", max_backoff)
        if self.max_backoff < self.backoff:
            raise ValueError(f"max_backoff ({max_backoff}) must be >= backoff ({backoff})")
        if not isinstance(fail_open, bool):
            raise TypeError(f"fail_open must be a bool, got {fail_open!r}")
        self.prefix = prefix
        self.fail_open = fail_open
        self.clock: Callable[[], float] = clock or time.monotonic
        if client is None:
            import redis.asyncio
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # bounded: one attempt, socket timeouts; the breaker does the retrying
            client = redis.asyncio.Redis.from_url(
                str(url),
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_client = True
            self._wait_for = False
        else:
            if not callable(getattr(client, "evalsha", None)):
                raise TypeError(f"client must be a redis.asyncio client, got {client!r}")
            # a caller's client has its own timeouts and retries; bound the call here
            self._owns_client = False
            self._wait_for = True
        self._client = client
        from redis.exceptions import NoScriptError

        self._no_script: type[Exception] = NoScriptError
        self._source = _load_script()
        self._sha = hashlib.sha1(self._source.encode("utf-8")).hexdigest()
        self.counts = StoreCounts()
        # policies -> (key suffixes, the script's ARGV tail), built once per policy set
        self._args: dict[tuple[Policy, ...], tuple[list[str], list[object]]] = {}
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def client(self) -> Any:
        return self._client

    def _script_args(self, policies: tuple[Policy, ...]) -> tuple[list[str], list[object]]:
        prepared = self._args.get(policies)
        if prepared is None:
            suffixes: list[str] = []
            tail: list[object] = []
            for policy in policies:
                suffix, interval_us, burst = _policy_args(policy)
                suffixes.append(suffix)
                tail.extend((interval_us, burst))
            prepared = (suffixes, tail)
            if len(self._args) < 1024:  # bounded: per-route sets are few
                self._args[policies] = prepared
        return prepared

    def keys(self, key: str, policies: Sequence[Policy]) -> list[str]:
        """The Redis keys holding a client's state under each policy."""
        suffixes, _ = self._script_args(tuple(policies))
        tagged = f"{self.prefix}{{{key}}}"
        return [tagged + suffix for suffix in suffixes]

    async def decide(self, key: str, policies: Sequence[Policy], cost: int) -> gcra.Verdict:
        """One script call; on failure a fail-open (or closed) verdict, counted."""
        chosen = tuple(policies)
        probing = False
        if self._open_until:
            now = self.clock()
            if now < self._open_until or self._probing:
                return self._unavailable(chosen, CIRCUIT_OPEN)
            # half open: this call probes, the others fail fast meanwhile
            self._probing = probing = True
        suffixes, tail = self._script_args(chosen)
        tagged = f"{self.prefix}{{{key}}}"
        keys = [tagged + suffix for suffix in suffixes]
        try:
            if self._wait_for:
                reply = await asyncio.wait_for(self._evaluate(keys, [cost, *tail]), self.timeout)
            else:  # our own client: its socket timeouts bound the call, no extra task
                try:
                    reply = await self._client.evalsha(self._sha, len(keys), *keys, cost, *tail)
                except self._no_script:  # a restarted or flushed server: load, retry once
                    self._sha = await self._client.script_load(self._source)
                    reply = await self._client.evalsha(self._sha, len(keys), *keys, cost, *tail)
            allowed, index, remaining, retry_us, reset_us = reply  # integer replies
        except Exception as exc:
            return self._failed(chosen, exc)
        finally:
            if probing:  # also when the caller is cancelled mid-probe
                self._probing = False
        if self._open_until:
            _logger.info("Rate-limit Redis store reachable again; circuit closed")
            self._open_until = 0.0
            self._failures = 0
        return gcra.Verdict(
            allowed == 1,
            index,
            remaining,
            retry_us * _NS_PER_US,
            reset_us * _NS_PER_US,
            None,
        )

    async def _evaluate(self, keys: list[str], args: list[object]) -> Any:
        """EVALSHA; on NOSCRIPT (a restarted or flushed server) load the script and retry."""
        client = self._client
        try:
            return await client.evalsha(self._sha, len(keys), *keys, *args)
        except self._no_script:
            self._sha = await client.script_load(self._source)
            return await client.evalsha(self._sha, len(keys), *keys, *args)

    def _failed(self, policies: tuple[Policy, ...], exc: Exception) -> gcra.Verdict:
        self._probing = False
        self._failures += 1
        wait = min(self.max_backoff, self.backoff * 2 ** min(self._failures - 1, 32))
        self._open_until = self.clock() + wait
        _logger.warning(
            "Rate-limit Redis store failed (%s); failing %s for %.1fs",
            type_name(type(exc)),
            "open" if self.fail_open else "closed",
            wait,
        )
        return self._unavailable(policies, type_name(type(exc)))

    def _unavailable(self, policies: tuple[Policy, ...], error_type: str) -> gcra.Verdict:
        for policy in policies:
            self.counts.failed(policy.name, error_type)
        if self.fail_open:
            return gcra.Verdict(True, 0, policies[0].burst - 1, 0, 0, None)
        retry_ns = max(0, round((self._open_until - self.clock()) * 1e9))
        return gcra.Verdict(False, 0, 0, retry_ns, 0, None)

    @property
    def circuit_open(self) -> bool:
        """Whether decisions currently skip Redis."""
        return bool(self._open_until) and self.clock() < self._open_until

    async def aclose(self) -> None:
        """Close the client if this store created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "open" if self.circuit_open else "closed"
        return (
            f"RedisStore(prefix={self.prefix!r}, timeout={self.timeout}, "
            f"fail_open={self.fail_open}, circuit={state}, failures={self._failures})"
        )
