"""The Redis store: one Lua script, one round trip for many decisions, for many instances.

The script runs GCRA on the Redis server's clock (``TIME``), so instances
with skewed clocks agree. A client's state is one small string key per
policy, ``{prefix}{{client key}}:{policy}``: the braces make them one hash
tag, so all keys of a decision live in one slot and the script runs on Redis
Cluster. Each key expires once its state is idle, so nothing needs sweeping.
The script goes out as EVALSHA; a restarted or ``SCRIPT FLUSH``-ed server
that answers NOSCRIPT gets it once more as EVAL, on the same round trip's
connection, which loads it again.

**The connection.** On a single Redis server (not a cluster) the store talks
over one connection of its own, made with the client's connection settings
(its pool's connection class and arguments: host, TLS, credentials, database,
Sentinel): since a store has at most one round trip in flight, one
connection is all it needs (on the event loop that made it; while that loop
runs, a decision from another thread's loop goes through the client), and
its round trips skip redis-py's generic
command path (pool checkout, retries, response callbacks, its per-command
observability hooks), which costs several times the store's own work. The
command goes out pre-encoded; the reply is read with redis-py's own parser.
The client's retries do not apply to it (the breaker does the retrying), nor
its socket timeout (the store bounds each round trip with ``timeout``, see
:mod:`._link`). On
Redis Cluster, and for a client whose pool has no connection class, the
store calls the script through the client.

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
import hashlib
import time
from collections.abc import Callable, Sequence
from functools import partial
from importlib import resources
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar

from otel_backpressure._shared import type_name
from otel_backpressure.ratelimit import gcra
from otel_backpressure.ratelimit._breaker import SKIP, Breaker
from otel_backpressure.ratelimit._checks import check_seconds
from otel_backpressure.ratelimit._link import Link, bulk
from otel_backpressure.ratelimit.metrics import StoreCounts
from otel_backpressure.ratelimit.policy import Policy

__all__ = ["RedisStore"]

_US: Final = 1_000_000
_NS_PER_US: Final = 1_000
CIRCUIT_OPEN: Final = "circuit_open"
# the error.type of a decision whose key holds another Redis type (the script's -1)
WRONG_TYPE: Final = "WRONGTYPE"
# the script's first argument: empty = decide at the server's clock
_SERVER_TIME: Final = b""
# seconds: finite, and far inside what the event loop and the socket accept
TIMEOUT_RANGE: Final = (0.001, 3_600.0)
PROBE_INTERVAL_RANGE: Final = (0.001, 3_600.0)

_BULK_SERVER_TIME: Final = bulk(_SERVER_TIME)
# the cost of almost every request, encoded once
_COST_1: Final = b"1"
_new_tuple = tuple.__new__
_T = TypeVar("_T")

# asyncio.timeout (3.11+): a deadline without the task asyncio.wait_for creates
_deadline: Callable[[float], Any] | None = getattr(asyncio, "timeout", None)


class _Prepared(NamedTuple):
    """A policy set as the script reads it, built once per set."""

    # the key suffixes, one per policy
    suffixes: list[str]
    # the per-request arguments after the cost: policy count, (interval us, burst) each
    tail: list[bytes]
    # the same, as RESP bulk strings
    packed_tail: bytes
    # a lone request of cost 1: every argument after the keys, in RESP...
    packed_args: bytes
    # ...and how many arguments the script call has (key count, keys, arguments)
    argc: int


# one request of a script call: its keys, its cost (encoded), its policy set
_Request = tuple[list[str], bytes, _Prepared]
# one queued decision: its request, its policies, its answer
_Queued = tuple[_Request, tuple[Policy, ...], "asyncio.Future[gcra.Verdict]"]


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


def _one_verdict(reply: bytes | str) -> gcra.Verdict | None:
    """The verdict in a one-request reply; None when its key holds another type."""
    allowed, index, remaining, retry_us, reset_us = map(int, reply.split())
    if allowed < 0:
        return None
    # tuple.__new__: a third of the NamedTuple constructor's time
    return _new_tuple(
        gcra.Verdict,
        (allowed == 1, index, remaining, retry_us * _NS_PER_US, reset_us * _NS_PER_US, None),
    )


def _values(requests: int, reply: bytes | str) -> list[int]:
    """A batch's reply as integers, five per request."""
    values = list(map(int, reply.split()))
    if len(values) != 5 * requests:
        raise ValueError(f"expected {5 * requests} integers, got {len(values)}")
    return values


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
            ``redis.asyncio.RedisCluster``. On a single server the store
            opens one connection of its own with the client's connection
            settings (closed in :meth:`aclose`; the client stays yours); on a
            cluster it calls the script through the client. Either way the
            store bounds each round trip with ``timeout``.
        prefix: prepended to every key; must not contain braces (the store
            makes the client key the hash tag).
        timeout: seconds one round trip may take before the decisions in it
            fail open (or closed); from 0.001 to 3600.
        fail_open: ``True`` (default) allows a request Redis could not decide;
            ``False`` rejects it, with ``retry_after`` the seconds to the next
            probe.
        probe_interval: seconds between probes while the circuit is open;
            enforcement resumes at most this long (plus one round trip) after
            Redis answers again. From 0.001 to 3600.
        clock: the breaker's clock, seconds as a float (default
            ``time.monotonic``); decisions themselves use the server's clock.

    Raises:
        ValueError: neither or both of ``url`` and ``client``; a ``prefix``
            with braces; a ``timeout`` or ``probe_interval`` out of its range
            (nan and inf included).
        TypeError: a ``url``/``prefix`` that is not a ``str``, a ``client``
            that is not a ``redis.asyncio`` client, a non-bool ``fail_open``,
            a ``timeout`` or ``probe_interval`` that is not a number.
        ImportError: ``redis`` is not installed (the ``redis`` extra).
    """

    __slots__ = (
        "_args",
        "_breaker",
        "_client",
        "_cluster",
        "_drainer",
        "_encoding",
        "_link",
        "_new_conn",
        "_no_script",
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
        self.timeout = check_seconds("timeout", timeout, *TIMEOUT_RANGE)
        self.probe_interval = check_seconds("probe_interval", probe_interval, *PROBE_INTERVAL_RANGE)
        if not isinstance(fail_open, bool):
            raise TypeError(f"fail_open must be a bool, got {fail_open!r}")
        self.prefix = prefix
        self.fail_open = fail_open
        self.clock: Callable[[], float] = clock or time.monotonic
        from redis.asyncio.cluster import RedisCluster
        from redis.exceptions import NoScriptError

        self._no_script = NoScriptError
        if client is None:
            import redis.asyncio

            # one attempt, the breaker does the retrying; no socket timeout (redis-py's
            # default is 5 s): the store bounds each round trip with one deadline,
            # where redis-py's per-send wait_for costs a task per command
            client = redis.asyncio.Redis.from_url(
                str(url),
                socket_timeout=None,
                socket_connect_timeout=self.timeout,
                retry=_no_retries(),
            )
            self._owns_client = True
        elif not callable(getattr(client, "register_script", None)):
            raise TypeError(f"client must be a redis.asyncio client, got {client!r}")
        else:
            self._owns_client = False
        self._cluster = isinstance(client, RedisCluster)
        self._client = client
        self._script = client.register_script(_load_script())
        # the store's own connection (single server): made on first use, per event loop
        self._new_conn = None if self._cluster else self._connection_factory(client)
        self._link: Link | None = None
        pool = getattr(client, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", None) or {}
        # keys are encoded as redis-py would encode them for this client
        self._encoding: tuple[str, str] = (
            kwargs.get("encoding", "utf-8"),
            kwargs.get("encoding_errors", "strict"),
        )
        self.counts = StoreCounts()
        self._breaker = Breaker(self.probe_interval, self.clock)
        # Redis Cluster: one breaker per node name (host:port)
        self._node_breakers: dict[str, Breaker] = {}
        # policy sets as the script reads them
        self._args: dict[tuple[Policy, ...], _Prepared] = {}
        # decisions waiting for the round trip in flight to end
        self._pending: list[_Queued] = []
        # the event loop of the round trip in flight; None when none is
        self._sending: asyncio.AbstractEventLoop | None = None
        self._drainer: asyncio.Task[None] | None = None

    def _connection_factory(self, client: Any) -> Callable[[], Any] | None:
        """Makes the store's own connection with ``client``'s settings; None if it cannot."""
        pool = getattr(client, "connection_pool", None)
        connection_class = getattr(pool, "connection_class", None)
        kwargs = getattr(pool, "connection_kwargs", None)
        if not callable(connection_class) or not isinstance(kwargs, dict):
            return None  # not a redis-py pool: the script goes through the client
        settings = {
            **kwargs,
            # the store's deadline bounds each round trip; a socket timeout would add
            # a task per send (wait_for) and a timer per read
            "socket_timeout": None,
            "socket_connect_timeout": self.timeout,
            "retry": _no_retries(),
        }
        return lambda: connection_class(**settings)

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

    def _prepared(self, policies: tuple[Policy, ...]) -> _Prepared:
        prepared = self._args.get(policies)
        if prepared is None:
            suffixes: list[str] = []
            numbers = [len(policies)]
            for policy in policies:
                suffix, interval_us, burst = _policy_args(policy)
                suffixes.append(suffix)
                numbers += (interval_us, burst)
            # encoded once here rather than on every call
            tail = [b"%d" % number for number in numbers]
            packed_tail = b"".join(map(bulk, tail))
            prepared = _Prepared(
                suffixes,
                tail,
                packed_tail,
                _BULK_SERVER_TIME + bulk(_COST_1) + packed_tail,
                1 + len(policies) + 2 + len(tail),
            )
            if len(self._args) < 1024:  # bounded: per-route sets are few
                self._args[policies] = prepared
        return prepared

    def keys(self, key: str, policies: Sequence[Policy]) -> list[str]:
        """The Redis keys holding a client's state under each policy."""
        tagged = f"{self.prefix}{{{key}}}"
        return [tagged + suffix for suffix in self._prepared(tuple(policies)).suffixes]

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
        chosen = policies if type(policies) is tuple else tuple(policies)
        prepared = self._args.get(chosen) or self._prepared(chosen)
        tagged = f"{self.prefix}{{{key}}}"
        request = (
            [tagged + suffix for suffix in prepared.suffixes],
            _COST_1 if cost == 1 else b"%d" % cost,
            prepared,
        )
        breaker = self._breaker if not self._cluster else self._breaker_for(request[0][0])
        loop = asyncio.get_running_loop()
        # a round trip is in flight: go out with the next batch (unless the flag
        # is left over from another, closed event loop, which would never clear it)
        if self._sending is loop:
            if breaker.is_open:
                return self._unavailable(chosen, CIRCUIT_OPEN, breaker)
            future: asyncio.Future[gcra.Verdict] = loop.create_future()
            self._pending.append((request, chosen, future))
            return await future
        ticket = breaker.admit()
        if ticket == SKIP:
            return self._unavailable(chosen, CIRCUIT_OPEN, breaker)
        self._sending = loop
        try:
            outcome = await self._round_trip(breaker, ticket, [request], loop, _one_verdict)
        finally:
            self._sending = None
            if self._pending:
                self._start_batch(loop)
        if isinstance(outcome, str):
            return self._unavailable(chosen, outcome, breaker)
        if outcome is None:
            return self._unavailable(chosen, WRONG_TYPE, breaker)
        return outcome

    async def _round_trip(
        self,
        breaker: Breaker,
        ticket: int,
        requests: list[_Request],
        loop: asyncio.AbstractEventLoop,
        parse: Callable[[Any], _T],
    ) -> _T | str:
        """One script call for ``requests``: ``parse(reply)``, or the error type.

        ``breaker`` hears the outcome. A reply of the wrong shape (not the
        script's: ``parse`` raises) counts as a failure like an unreachable
        server, never as a raised error.
        """
        try:
            link = self._link
            if link is None or link.loop is not loop:
                link = self._link_for(loop)
            if link is None:
                reply = await self._via_client(requests)
            else:
                reply = await link.script(*self._packed(requests))
            parsed = parse(reply)
        except asyncio.CancelledError:
            breaker.abandoned(ticket)
            raise
        except Exception as exc:
            error_type = type_name(type(exc))
            breaker.failed(ticket, error_type)
            return error_type
        breaker.succeeded(ticket)
        return parsed

    def _link_for(self, loop: asyncio.AbstractEventLoop) -> Link | None:
        """The store's own connection on ``loop``; None: call the script through the client.

        A connection serves the event loop it was made on. Once that loop is
        closed, the next loop gets a new one (the old one's round trip, if
        any, died with its loop); while it runs, another thread's loop goes
        through the client.
        """
        link = self._link
        if link is not None:
            if link.loop is loop:
                return link
            if not link.loop.is_closed():
                return None
        if self._new_conn is None:
            return None
        source = _load_script().encode()
        sha = hashlib.sha1(source, usedforsecurity=False).hexdigest().encode()
        self._link = link = Link(self._new_conn(), loop, self.timeout, sha, source, self._no_script)
        return link

    def _packed(self, requests: list[_Request]) -> tuple[int, bytes]:
        """The script's arguments for ``requests`` in RESP: (how many, the bytes)."""
        encoding, errors = self._encoding
        if len(requests) == 1:  # a lone decision: mostly pre-encoded
            keys, cost, prepared = requests[0]
            if cost is _COST_1:
                args = prepared.packed_args
            else:
                args = b"%b%b%b" % (_BULK_SERVER_TIME, bulk(cost), prepared.packed_tail)
            if len(keys) == 1:
                encoded = keys[0].encode(encoding, errors)
                return prepared.argc, b"$1\r\n1\r\n$%d\r\n%b\r\n%b" % (
                    len(encoded),
                    encoded,
                    args,
                )
            packed = b"".join([bulk(key.encode(encoding, errors)) for key in keys])
            return prepared.argc, b"%b%b%b" % (bulk(b"%d" % len(keys)), packed, args)
        packed_keys: list[bytes] = []
        packed_args = [_BULK_SERVER_TIME]
        argc = 2  # the key count, the server-time flag
        for keys, cost, prepared in requests:
            for key in keys:
                packed_keys.append(bulk(key.encode(encoding, errors)))
            packed_args += (bulk(cost), prepared.packed_tail)
            argc += len(keys) + 1 + len(prepared.tail)
        body = b"%b%b%b" % (
            bulk(b"%d" % len(packed_keys)),
            b"".join(packed_keys),
            b"".join(packed_args),
        )
        return argc, body

    async def _via_client(self, requests: list[_Request]) -> Any:
        """One script call through the client (Redis Cluster): its reply, bounded by timeout."""
        keys: list[str] = []
        args: list[bytes] = [_SERVER_TIME]
        for request_keys, cost, prepared in requests:
            keys += request_keys
            args.append(cost)
            args += prepared.tail
        if _deadline is None:  # Python 3.10
            return await asyncio.wait_for(self._script(keys, args), self.timeout)
        async with _deadline(self.timeout):
            return await self._script(keys, args)

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sending = loop
        self._drainer = loop.create_task(self._drain(loop))

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send what queued up, batch after batch, until nothing is waiting."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                if self._cluster:  # a script call may touch one slot only
                    await asyncio.gather(*(self._send(group, loop) for group in _by_slot(batch)))
                else:
                    await self._send(batch, loop)
        finally:
            self._sending = None
            for _, _, future in self._pending:  # only left over when cancelled
                future.cancel()
            self._pending = []

    async def _send(self, batch: list[_Queued], loop: asyncio.AbstractEventLoop) -> None:
        """One script call deciding ``batch``; every waiting decision gets its verdict."""
        breaker = self._breaker_for(batch[0][0][0][0])
        ticket = breaker.admit()
        if ticket == SKIP:
            self._settle(batch, CIRCUIT_OPEN, breaker)
            return
        requests = [request for request, _, _ in batch]
        try:
            outcome = await self._round_trip(
                breaker, ticket, requests, loop, partial(_values, len(requests))
            )
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        self._settle(batch, outcome, breaker)

    def _settle(self, batch: list[_Queued], outcome: list[int] | str, breaker: Breaker) -> None:
        """Give each waiting decision its verdict: from the reply, or failed open (closed)."""
        for i, (_, policies, future) in enumerate(batch):
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
        """Wait for a batch in flight, then close the store's connection (and its client)."""
        if self._drainer is not None and not self._drainer.done():
            await asyncio.wait([self._drainer], timeout=self.timeout)
        link, self._link = self._link, None
        if link is not None:
            if link.loop is asyncio.get_running_loop():
                await link.aclose()
            elif link.loop.is_running():  # another thread's loop: closed on it
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(link.aclose(), link.loop)
                )
            # else: its loop is closed (or stopped), and the connection with it
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


def _no_retries() -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def _by_slot(batch: list[_Queued]) -> list[list[_Queued]]:
    """A batch split by Redis Cluster hash slot: a script call may touch one slot only."""
    from redis.crc import key_slot

    groups: dict[int, list[_Queued]] = {}
    for queued in batch:
        groups.setdefault(key_slot(queued[0][0][0].encode()), []).append(queued)
    return list(groups.values())
