"""The Redis store: one Lua script, one round trip for many decisions, for many instances.

The script runs GCRA on the Redis server's clock (``TIME``), so instances
with skewed clocks agree. A client's state is one small string key per
policy, ``{prefix}{{client key}}:{policy}``: the braces make them one hash
tag, so all keys of a decision live in one slot and the script runs on Redis
Cluster. Each key expires once its state is idle, so nothing needs sweeping.
The script is registered with redis-py's ``register_script``, which sends
EVALSHA and loads the script again when a restarted or ``SCRIPT FLUSH``-ed
server answers NOSCRIPT.

**Batching.** A store has at most one round trip in flight. A decision that
arrives while one is in flight waits for it and then goes out with every
other decision that arrived meanwhile, in one script call (decided in
arrival order, each exactly as if alone). A lone decision goes out at once:
nothing ever waits for a batch to fill. On Redis Cluster a batch is split by
hash slot and the slots' calls go out together.

**Failures.** When Redis is unreachable or slower than ``timeout``, the
decision fails open (allowed; ``fail_open=False`` rejects instead), the error
is counted in ``backpressure.rate_limit.store.errors``, and a circuit breaker
(:mod:`._breaker`) stops asking Redis: one outage opens it once however many
decisions were in flight, and while it is open one probe per
``probe_interval`` seconds finds out when Redis is back. Decisions made while
the breaker is open count as ``error.type=circuit_open``. On Redis Cluster
each node has its own breaker. A key that holds
another Redis type fails only its own decision (``error.type=WRONGTYPE``):
the server answered, so it is no outage, and the batch around it is decided.

Example::

    from otel_backpressure.ratelimit import Policy, RateLimiter, RedisStore

    store = RedisStore("redis://localhost:6379/0", prefix="myapp:rl:", timeout=0.05)
    limiter = RateLimiter([Policy("api", rate=100, period=60)], store=store)
    decision = await limiter.hit("client-42")
    await store.aclose()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from importlib import resources
from types import TracebackType
from typing import Any, Final

from otel_backpressure._shared import type_name
from otel_backpressure.ratelimit import gcra
from otel_backpressure.ratelimit._breaker import SKIP, Breaker
from otel_backpressure.ratelimit.metrics import StoreCounts
from otel_backpressure.ratelimit.policy import Policy
from otel_backpressure.settings import check_positive

__all__ = ["RedisStore"]

_US: Final = 1_000_000
_NS_PER_US: Final = 1_000
CIRCUIT_OPEN: Final = "circuit_open"
# the error.type of a decision whose key holds another Redis type (the script's -1)
WRONG_TYPE: Final = "WRONGTYPE"
# the script's first argument: empty = decide at the server's clock
_SERVER_TIME: Final = b""

# asyncio.timeout (3.11+): a deadline without the task asyncio.wait_for creates
_deadline: Callable[[float], Any] | None = getattr(asyncio, "timeout", None)

# one queued decision: its keys, its script arguments, its policies, its answer
_Queued = tuple[list[str], list[object], tuple[Policy, ...], "asyncio.Future[gcra.Verdict]"]


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


def _verdict(values: Sequence[int], at: int) -> gcra.Verdict:
    """The verdict of the request whose five integers start at ``values[at]``."""
    allowed, index, remaining, retry_us, reset_us = values[at : at + 5]
    return gcra.Verdict(
        allowed == 1, index, remaining, retry_us * _NS_PER_US, reset_us * _NS_PER_US, None
    )


class RedisStore:
    """GCRA state in Redis, shared by every instance; see the module docstring.

    Args:
        url: a ``redis://`` / ``rediss://`` / ``unix://`` URL; the store creates
            a ``redis.asyncio`` client with ``timeout`` as its connect timeout
            and no retries, and closes it in :meth:`aclose`. Exactly one of
            ``url`` and ``client`` is given.
        client: your own ``redis.asyncio.Redis`` or
            ``redis.asyncio.RedisCluster``; it keeps its own timeouts and
            retries, and the store bounds each round trip with ``timeout``.
        prefix: prepended to every key; must not contain braces (the store
            makes the client key the hash tag).
        timeout: seconds one round trip may take before the decisions in it
            fail open (or closed); positive and finite.
        fail_open: ``True`` (default) allows a request Redis could not decide;
            ``False`` rejects it, with ``retry_after`` the seconds to the next
            probe.
        probe_interval: seconds between probes while the circuit is open;
            enforcement resumes at most this long (plus one round trip) after
            Redis answers again. Positive and finite.
        clock: the breaker's clock, seconds as a float (default
            ``time.monotonic``); decisions themselves use the server's clock.

    Raises:
        ValueError: neither or both of ``url`` and ``client``; a ``prefix``
            with braces; a ``timeout`` or ``probe_interval`` that is not a
            positive finite number.
        TypeError: a ``url``/``prefix`` that is not a ``str``, a ``client``
            that is not a ``redis.asyncio`` client, a non-bool ``fail_open``.
        ImportError: ``redis`` is not installed (the ``redis`` extra).
    """

    __slots__ = (
        "_args",
        "_breaker",
        "_client",
        "_cluster",
        "_drainer",
        "_node_breakers",
        "_owns_client",
        "_pending",
        "_script",
        "_sending",
        "clock",
        "counts",
        "fail_open",
        "prefix",
        "probe_interval",
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
        probe_interval: float = 1.0,
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
        self.probe_interval = check_positive("probe_interval", probe_interval)
        if not isinstance(fail_open, bool):
            raise TypeError(f"fail_open must be a bool, got {fail_open!r}")
        self.prefix = prefix
        self.fail_open = fail_open
        self.clock: Callable[[], float] = clock or time.monotonic
        from redis.asyncio.cluster import RedisCluster

        if client is None:
            import redis.asyncio
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # one attempt, the breaker does the retrying; no socket timeout (redis-py's
            # default is 5 s): the store bounds each round trip with one deadline,
            # where redis-py's per-send wait_for costs a task per command
            client = redis.asyncio.Redis.from_url(
                str(url),
                socket_timeout=None,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_client = True
        elif not callable(getattr(client, "register_script", None)):
            raise TypeError(f"client must be a redis.asyncio client, got {client!r}")
        else:
            self._owns_client = False
        self._cluster = isinstance(client, RedisCluster)
        self._client = client
        self._script = client.register_script(_load_script())
        self.counts = StoreCounts()
        self._breaker = Breaker(self.probe_interval, self.clock)
        # Redis Cluster: one breaker per node name (host:port)
        self._node_breakers: dict[str, Breaker] = {}
        # policies -> (key suffixes, the script's per-request arguments after cost)
        self._args: dict[tuple[Policy, ...], tuple[list[str], list[object]]] = {}
        # decisions waiting for the round trip in flight to end
        self._pending: list[_Queued] = []
        # the event loop of the round trip in flight; None when none is
        self._sending: asyncio.AbstractEventLoop | None = None
        self._drainer: asyncio.Task[None] | None = None

    @property
    def client(self) -> Any:
        return self._client

    @property
    def breaker(self) -> Breaker:
        """The circuit breaker (read its ``outages``; see :mod:`._breaker`).

        On Redis Cluster each node has its own (:attr:`node_breakers`); this one
        serves only until the client has loaded the cluster's slots.
        """
        return self._breaker

    @property
    def node_breakers(self) -> dict[str, Breaker]:
        """Redis Cluster: each node's breaker, by node name (``host:port``)."""
        return dict(self._node_breakers)

    def _script_args(self, policies: tuple[Policy, ...]) -> tuple[list[str], list[object]]:
        prepared = self._args.get(policies)
        if prepared is None:
            suffixes: list[str] = []
            tail: list[object] = [len(policies)]
            for policy in policies:
                suffix, interval_us, burst = _policy_args(policy)
                suffixes.append(suffix)
                tail.extend((interval_us, burst))
            # encoded once here rather than by redis-py on every call
            tail = [str(value).encode() for value in tail]
            prepared = (suffixes, tail)
            if len(self._args) < 1024:  # bounded: per-route sets are few
                self._args[policies] = prepared
        return prepared

    def keys(self, key: str, policies: Sequence[Policy]) -> list[str]:
        """The Redis keys holding a client's state under each policy."""
        suffixes, _ = self._script_args(tuple(policies))
        tagged = f"{self.prefix}{{{key}}}"
        return [tagged + suffix for suffix in suffixes]

    def _breaker_for(self, key: str) -> Breaker:
        """The breaker of the server holding ``key``.

        One per Redis Cluster node, so one node's outage leaves the decisions
        on the others enforced, and a probe that another node answers does
        not close the breaker of the node that is down.
        """
        if not self._cluster:
            return self._breaker
        try:
            name: str = self._client.get_node_from_key(key).name
        except Exception:  # the slots are not loaded yet: the store's own breaker
            return self._breaker
        breaker = self._node_breakers.get(name)
        if breaker is None:
            if len(self._node_breakers) >= 1024:  # bounded: nodes come and go
                self._node_breakers.clear()
            breaker = self._node_breakers[name] = Breaker(self.probe_interval, self.clock)
        return breaker

    async def decide(self, key: str, policies: Sequence[Policy], cost: int) -> gcra.Verdict:
        """Decide one request; on failure a fail-open (or closed) verdict, counted."""
        chosen = tuple(policies)
        suffixes, tail = self._script_args(chosen)
        tagged = f"{self.prefix}{{{key}}}"
        keys = [tagged + suffix for suffix in suffixes]
        breaker = self._breaker_for(keys[0])
        loop = asyncio.get_running_loop()
        # a round trip is in flight: go out with the next batch (unless the flag
        # is left over from another, closed event loop, which would never clear it)
        if self._sending is loop:
            if breaker.is_open:
                return self._unavailable(chosen, CIRCUIT_OPEN, breaker)
            future: asyncio.Future[gcra.Verdict] = loop.create_future()
            self._pending.append((keys, [cost, *tail], chosen, future))
            return await future
        ticket = breaker.admit()
        if ticket == SKIP:
            return self._unavailable(chosen, CIRCUIT_OPEN, breaker)
        self._sending = loop
        try:
            outcome = await self._round_trip(breaker, ticket, keys, [_SERVER_TIME, cost, *tail], 1)
        finally:
            self._sending = None
            if self._pending:
                self._start_batch(loop)
        if isinstance(outcome, str):
            return self._unavailable(chosen, outcome, breaker)
        if outcome[0] < 0:
            return self._unavailable(chosen, WRONG_TYPE, breaker)
        return _verdict(outcome, 0)

    async def _round_trip(
        self, breaker: Breaker, ticket: int, keys: list[str], args: list[object], requests: int
    ) -> list[int] | str:
        """One script call for ``requests`` decisions: the reply's integers, or the error type.

        ``breaker`` hears the outcome. A reply of the wrong shape (not the
        script's) counts as a failure like an unreachable server, never as a
        raised error.
        """
        try:
            values = [int(field) for field in (await self._call(keys, args)).split()]
            if len(values) != 5 * requests:
                raise ValueError(f"expected {5 * requests} integers, got {len(values)}")
        except asyncio.CancelledError:
            breaker.abandoned(ticket)
            raise
        except Exception as exc:
            error_type = type_name(type(exc))
            breaker.failed(ticket, error_type)
            return error_type
        breaker.succeeded(ticket)
        return values

    async def _call(self, keys: list[str], args: list[object]) -> Any:
        """One script call, bounded by ``timeout`` (redis-py drops a cancelled connection)."""
        if _deadline is None:  # Python 3.10
            return await asyncio.wait_for(self._script(keys, args), self.timeout)
        async with _deadline(self.timeout):
            return await self._script(keys, args)

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sending = loop
        self._drainer = loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Send what queued up, batch after batch, until nothing is waiting."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                if self._cluster:  # a script call may touch one slot only
                    await asyncio.gather(*(self._send(group) for group in _by_slot(batch)))
                else:
                    await self._send(batch)
        finally:
            self._sending = None
            for _, _, _, future in self._pending:  # only left over when cancelled
                future.cancel()
            self._pending = []

    async def _send(self, batch: list[_Queued]) -> None:
        """One script call deciding ``batch``; every waiting decision gets its verdict."""
        breaker = self._breaker_for(batch[0][0][0])
        ticket = breaker.admit()
        if ticket == SKIP:
            self._settle(batch, CIRCUIT_OPEN, breaker)
            return
        keys: list[str] = []
        args: list[object] = [_SERVER_TIME]
        for request_keys, request_args, _, _ in batch:
            keys += request_keys
            args += request_args
        try:
            outcome = await self._round_trip(breaker, ticket, keys, args, len(batch))
        except asyncio.CancelledError:
            for _, _, _, future in batch:
                future.cancel()
            raise
        self._settle(batch, outcome, breaker)

    def _settle(self, batch: list[_Queued], outcome: list[int] | str, breaker: Breaker) -> None:
        """Give each waiting decision its verdict: from the reply, or failed open (closed)."""
        for i, (_, _, policies, future) in enumerate(batch):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(outcome, str):
                future.set_result(self._unavailable(policies, outcome, breaker))
            elif outcome[5 * i] < 0:
                future.set_result(self._unavailable(policies, WRONG_TYPE, breaker))
            else:
                future.set_result(_verdict(outcome, 5 * i))

    def _unavailable(
        self, policies: tuple[Policy, ...], error_type: str, breaker: Breaker
    ) -> gcra.Verdict:
        for policy in policies:
            self.counts.failed(policy.name, error_type)
        if self.fail_open:
            return gcra.Verdict(True, 0, policies[0].burst - 1, 0, 0, None)
        retry_ns = round(breaker.retry_in() * 1e9)
        return gcra.Verdict(False, 0, 0, retry_ns, 0, None)

    @property
    def circuit_open(self) -> bool:
        """Whether some decisions currently skip Redis (a breaker is open or half open)."""
        return self._breaker.is_open or any(b.is_open for b in self._node_breakers.values())

    async def aclose(self) -> None:
        """Wait for a batch in flight, then close the client if this store created it."""
        if self._drainer is not None and not self._drainer.done():
            await asyncio.wait([self._drainer], timeout=self.timeout)
        if self._owns_client:
            # aclose() is redis-py 5.0.1+; close() before, deprecated since
            close = getattr(self._client, "aclose", None) or self._client.close
            await close()

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
        return (
            f"RedisStore(prefix={self.prefix!r}, timeout={self.timeout}, "
            f"fail_open={self.fail_open}, circuit={self._breaker.state}, "
            f"outages={self._breaker.outages}, nodes_open="
            f"{sum(b.is_open for b in self._node_breakers.values())})"
        )


def _by_slot(batch: list[_Queued]) -> list[list[_Queued]]:
    """A batch split by Redis Cluster hash slot: a script call may touch one slot only."""
    from redis.crc import key_slot

    groups: dict[int, list[_Queued]] = {}
    for queued in batch:
        groups.setdefault(key_slot(queued[0][0].encode()), []).append(queued)
    return list(groups.values())
