"""``python -m otel_backpressure.demo``: see the package's telemetry in one command.

Usage::

    python -m otel_backpressure.demo                       # SQLite, 20 s, summary only
    python -m otel_backpressure.demo --otlp-endpoint http://localhost:4317
    python -m otel_backpressure.demo --database-url postgresql+asyncpg://user@host/db

Without ``--otlp-endpoint`` the standard ``OTEL_EXPORTER_OTLP_*`` and
``OTEL_*_EXPORTER`` variables decide where telemetry goes (for example
``OTEL_METRICS_EXPORTER=prometheus`` serves metrics for Prometheus to scrape);
with none of them set nothing is exported, and the live view (read through an
in-process metric reader) still works.

The trouble is spread over the run (demo/scenario.py), so whatever the
``--duration``, the live view moves through calm play, a pool rush, rate-limit
storms, an error burst and recovery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_backpressure.demo.summary import DemoSummary, read_snapshot
from otel_backpressure.demo.view import WIDTH
from otel_backpressure.telemetry import configure_telemetry

__all__ = ["main"]

_ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
_EXPORTER_VARIABLES = ("OTEL_METRICS_EXPORTER", "OTEL_TRACES_EXPORTER")


PROG = "python -m otel_backpressure.demo"
_N = TypeVar("_N", int, float)
#: seconds the first connection to the database may take
CONNECT_SECONDS = 15.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A small game service under load: pool pressure, rate limits, mapped errors.",
    )
    parser.add_argument("--duration", type=_seconds_above_zero, default=20.0, help="seconds (20)")
    parser.add_argument(
        "--players", type=_player_count, default=20, help="concurrent players, 1 or more (20)"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy async URL, e.g. postgresql+asyncpg://postgres@127.0.0.1/test "
        "(default: an embedded SQLite file through aiosqlite)",
    )
    parser.add_argument(
        "--otlp-endpoint",
        type=_otlp_endpoint,
        default=None,
        help="OTLP collector, e.g. http://localhost:4317 (default: the OTEL_* variables)",
    )
    parser.add_argument(
        "--otlp-protocol",
        choices=["grpc", "http/protobuf"],
        default=None,
        help="with --otlp-endpoint (default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc)",
    )
    parser.add_argument(
        "--interval",
        type=_seconds_above_zero,
        default=2.0,
        help="seconds between plain progress reports when stdout is not a terminal (2)",
    )
    parser.add_argument(
        "--pool-size", type=_pool_size, default=4, help="pool_size; 0: no limit (4)"
    )
    parser.add_argument(
        "--max-overflow",
        type=_max_overflow,
        default=2,
        help="max_overflow; 0: no overflow, -1: no limit (2)",
    )
    parser.add_argument(
        "--pool-timeout",
        type=_seconds_from_zero,
        default=0.25,
        help="pool checkout timeout; 0: fail at once when the pool is full (0.25 s)",
    )
    parser.add_argument(
        "--redis-url",
        type=_redis_url,
        default=os.environ.get("BACKPRESSURE_DEMO_REDIS_URL"),
        help="cache player profiles in this Redis (a second pool to watch); default: none",
    )
    parser.add_argument(
        "--limiter-redis-url",
        type=_redis_url,
        default=None,
        help="keep the rate limiter's counters in this Redis (RedisStore) instead of memory; "
        "stop it in the outage phase to see the limiter fail open (default: in memory)",
    )
    parser.add_argument(
        "--seed", type=_whole_number, default=7, help="random seed of the players (7)"
    )
    parser.add_argument(
        "--summary-json",
        type=_summary_path,
        default=None,
        help="also write the summary to this file",
    )
    args = parser.parse_args(argv)
    problem = _database_problem(args)
    if problem is not None:
        parser.error(f"argument --database-url: {problem}")
    return args


# Argument types: each names what it expects (argparse prints the message of
# an ArgumentTypeError as it is; any other error would print the function's name).


def _number(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _integer(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _bounded(
    parse: Callable[[str, str], _N], expected: str, fits: Callable[[_N], bool]
) -> Callable[[str], _N]:
    """An argument type: ``parse`` (``_number`` or ``_integer``), then ``fits`` the value."""

    def check(text: str) -> _N:
        value = parse(text, expected)
        if not fits(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return check


_seconds_above_zero = _bounded(_number, "a number of seconds > 0", lambda value: value > 0)
_seconds_from_zero = _bounded(_number, "a number of seconds >= 0", lambda value: value >= 0)
# SQLAlchemy's QueuePool: pool_size 0 keeps every connection (no limit),
# max_overflow 0 opens none beyond pool_size and -1 any number.
_player_count = _bounded(_integer, "a whole number of players >= 1", lambda value: value >= 1)
_pool_size = _bounded(_integer, "a whole number >= 0 (0: no limit)", lambda value: value >= 0)
_max_overflow = _bounded(
    _integer, "a whole number >= -1 (0: no overflow, -1: no limit)", lambda value: value >= -1
)


def _whole_number(text: str) -> int:
    return _integer(text, "a whole number")


def _otlp_endpoint(text: str) -> str:
    try:
        parts = urlsplit(text)
    except ValueError:  # a bracket with no IPv6 address in it
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            "expected an http:// or https:// URL such as http://localhost:4317, "
            f"got {_hide_password(text)!r}"
        )
    return text


def _redis_url(text: str) -> str:
    try:
        from redis.asyncio.connection import parse_url
    except ImportError:
        raise argparse.ArgumentTypeError(
            "needs redis-py: pip install 'opentelemetry-instrumentation-backpressure[all]'"
        ) from None
    try:
        parse_url(text)
    except ValueError as exc:
        # redis-py's reason quotes a part of the URL (the port): left out when
        # that part may be the password, split where urlsplit stopped reading it
        secret = _password(text) or ""
        reason = str(exc)
        if any(part in reason for part in re.split(r"[^A-Za-z0-9]+", secret) if part):
            reason = "not a valid URL"
        raise argparse.ArgumentTypeError(
            f"expected a redis://, rediss:// or unix:// URL such as redis://127.0.0.1:6379/0, "
            f"got {_hide_password(text)!r} ({reason})"
        ) from None
    return text


def _summary_path(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file to write, got the directory {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"expected a file in an existing directory, got {text!r} "
            f"(no directory {str(path.parent)!r})"
        )
    return path


def _password(url: str) -> str | None:
    """The text of ``url`` that may be a password, or None.

    Read from the text itself, not through ``urlsplit``: a URL bad enough to
    be refused is one ``urlsplit`` may misread (an unencoded ``/`` or ``#`` in
    the password ends its netloc early, a stray ``[`` makes it raise, a
    missing ``:`` before ``//`` leaves no netloc). The user information ends
    at the last ``@`` and starts after ``//`` (or the scheme's ``:`` when
    there is no ``//`` before it); the password is what follows its first ``:``.
    """
    at = url.rfind("@")
    if at < 0:
        return None
    slashes = url.find("//", 0, at)
    start = slashes + 2 if slashes >= 0 else url.find(":", 0, at) + 1
    colon = url.find(":", start, at)
    return None if colon < 0 else url[colon + 1 : at]


def _hide_password(url: str) -> str:
    """``url`` with its password, as ``_password`` finds it, shown as ``***``."""
    password = _password(url)
    if password is None:
        return url
    at = url.rfind("@")
    return f"{url[: at - len(password)]}***{url[at:]}"


def _database_problem(args: argparse.Namespace) -> str | None:
    """What makes ``--database-url`` unusable with the pool arguments, or None.

    An engine is built and thrown away: that parses the URL, loads the dialect
    and its driver, checks the driver is async and that the URL's pool takes
    the pool arguments. Nothing connects yet (see ``run``).
    """
    if args.database_url is None:
        return None
    from sqlalchemy import exc
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    try:
        url = make_url(args.database_url)
    except (exc.ArgumentError, ValueError):  # ValueError: a port that is no number
        return (
            f"expected a SQLAlchemy URL (dialect+driver://user@host/database), "
            f"got {_hide_password(args.database_url)!r}"
        )
    shown = url.render_as_string(hide_password=True)
    try:
        engine = create_async_engine(
            url,
            pool_size=args.pool_size,
            max_overflow=args.max_overflow,
            pool_timeout=args.pool_timeout,
        )
    except exc.NoSuchModuleError:
        return (
            f"SQLAlchemy has no dialect+driver {url.drivername!r} (in {shown!r}); "
            "use an async one, e.g. postgresql+asyncpg:// or sqlite+aiosqlite://"
        )
    except ImportError as error:
        return f"{shown}: its driver is not installed ({error})"
    except exc.InvalidRequestError:  # a sync driver
        return (
            f"{shown}: driver {url.get_driver_name()!r} is not async; "
            "use an async one, e.g. postgresql+asyncpg:// or sqlite+aiosqlite://"
        )
    except TypeError:  # a pool that takes no size (SQLite in memory: one connection)
        return (
            f"{shown}: its pool takes no --pool-size/--max-overflow/--pool-timeout "
            "(an in-memory SQLite database has one connection); give a file, "
            "e.g. sqlite+aiosqlite:///game.db"
        )
    engine.sync_engine.dispose()
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


async def run(args: argparse.Namespace) -> int:
    from sqlalchemy.ext.asyncio import create_async_engine

    from otel_backpressure.demo.app import GameService, build_app, player_policy, proposed_policy
    from otel_backpressure.demo.outbound import Profiles, ProfileService
    from otel_backpressure.ratelimit import RateLimiter, RedisStore

    export = args.otlp_endpoint is not None or any(
        os.environ.get(v) for v in (*_ENDPOINT_VARIABLES, *_EXPORTER_VARIABLES)
    )
    reader = InMemoryMetricReader()
    try:
        telemetry = configure_telemetry(
            service_name=os.environ.get("OTEL_SERVICE_NAME") or "backpressure-demo",
            endpoint=args.otlp_endpoint,
            protocol=args.otlp_protocol,
            export=export,
            metric_export_interval=5.0 if "OTEL_METRIC_EXPORT_INTERVAL" not in os.environ else None,
            metric_readers=[reader],
            instrument=True,
        )
    except (ValueError, ImportError) as error:
        # a bad OTEL_* variable or an exporter not installed (parse_args checked the
        # arguments): the message names it; one line, as for them, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    workdir = None
    url = args.database_url
    if url is None:
        workdir = tempfile.TemporaryDirectory(prefix="backpressure-demo-")
        url = f"sqlite+aiosqlite:///{workdir.name}/game.db"
    engine = create_async_engine(
        url,
        pool_size=args.pool_size,
        max_overflow=args.max_overflow,
        pool_timeout=args.pool_timeout,
    )
    suffix = uuid.uuid4().hex[:8]
    service = GameService(engine, suffix=suffix)
    # the game's upstream over real HTTP, and its clients: made after the
    # instrumentor is on, which instruments their pools as they are created
    upstream = ProfileService().__enter__()
    profiles = Profiles(upstream.url, redis_url=args.redis_url)
    # in Redis, the counters of this run only (its own key prefix); the limiter
    # fails open while that Redis is away and counts the store's errors. The
    # round-trip deadline is long: the threads phase blocks the event loop for
    # seconds at a time, and a reply that waits behind the loop would count as
    # a store timeout (in an application that is what happens: see the store
    # errors runbook in docs/alerts.md); the outage refuses connections at once.
    store = (
        RedisStore(args.limiter_redis_url, prefix=f"otel-backpressure-demo:{suffix}:", timeout=5.0)
        if args.limiter_redis_url
        else None
    )
    limiter = RateLimiter([player_policy()], store=store, meter_provider=telemetry.meter_provider)
    proposed = RateLimiter([proposed_policy()], meter_provider=telemetry.meter_provider)
    summary = DemoSummary()
    destination = args.otlp_endpoint or next(
        (os.environ[v] for v in _ENDPOINT_VARIABLES if os.environ.get(v)),
        "metrics: " + os.environ.get("OTEL_METRICS_EXPORTER", "otlp"),
    )
    print(
        f"backpressure demo: {args.players} players for {args.duration:g} s on "
        f"{engine.url.get_backend_name()}\n"
        f"pool_size={args.pool_size} max_overflow={args.max_overflow} "
        f"pool_timeout={args.pool_timeout:g}s; "
        + ("limiter on Redis; " if store is not None else "")
        + (f"exporting to {destination}" if export else "no OTLP endpoint: summary only"),
        flush=True,
    )
    schema = False
    try:
        problem = await _create_schema(service, args.players)
        if problem is not None:
            _cannot_use("--database-url", engine.url.render_as_string(hide_password=True), problem)
            return 1
        schema = True
        # the cache is optional, a cache that cannot be reached is a typo: one
        # line, as for the database, rather than a run of 500s
        problem = await _first_contact(profiles.ping())
        if problem is not None:
            _cannot_use("--redis-url", _hide_password(args.redis_url), problem)
            return 1
        traffic = await _drive(
            args,
            build_app(service, limiter, proposed, profiles),
            service,
            summary,
            reader,
            upstream,
        )
        summary.update(read_snapshot(reader))
        telemetry.force_flush()  # export the pools' last readings while they still exist
    finally:
        if schema:
            await _drop_schema(service)
        await _close_store(limiter)
        await _close_store(proposed)
        await profiles.aclose()
        upstream.__exit__(None, None, None)
        await engine.dispose()
        telemetry.shutdown()
        if workdir is not None:
            workdir.cleanup()
    _print_final(args, traffic, summary, export)
    if args.summary_json is not None:
        document = summary.as_dict()
        document["requests"] = {str(k): v for k, v in sorted(traffic.statuses.items())}
        document["client_failures"] = dict(traffic.failures)
        args.summary_json.write_text(json.dumps(document, indent=2, sort_keys=True))
    return 0


async def _drive(
    args: argparse.Namespace,
    app: Any,
    service: Any,
    summary: DemoSummary,
    reader: InMemoryMetricReader,
    upstream: Any = None,
) -> Any:
    import anyio.to_thread
    import httpx

    from otel_backpressure.demo.app import EXECUTOR_WORKERS, THREAD_TOKENS
    from otel_backpressure.demo.players import Traffic, play
    from otel_backpressure.demo.scenario import PHASES, phase_at
    from otel_backpressure.demo.view import Header, LiveView

    # the limiter the sync /export endpoint runs on, smaller than anyio's 40
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREAD_TOKENS
    traffic = Traffic()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=EXECUTOR_WORKERS, thread_name_prefix="asyncio")
    )
    current = PHASES[0]
    service.leaderboard_hold, service.bug_rate = current.hold, current.bug

    def phase() -> Any:
        return current

    view = LiveView()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            await _warm_up(client)
            started = loop.time()
            deadline = started + args.duration
            players = [
                asyncio.ensure_future(
                    play(
                        client,
                        n,
                        args.players,
                        deadline,
                        traffic,
                        random.Random(args.seed + n),
                        phase,
                    )
                )
                for n in range(1, args.players + 1)
            ]
            next_print = started
            while not all(task.done() for task in players):
                now = loop.time()
                current = phase_at((now - started) / args.duration)
                service.leaderboard_hold, service.bug_rate = current.hold, current.bug
                if upstream is not None:
                    upstream.delay = current.upstream
                snapshot = read_snapshot(reader)
                summary.update(snapshot)  # sample often: peaks are short
                tick = now >= next_print
                if tick:
                    next_print += args.interval
                header = Header(
                    now - started, args.duration, current.name, current.summary,
                    dict(traffic.statuses),
                )  # fmt: skip
                view.update(header, snapshot, tick=tick)
                await asyncio.sleep(0.25)
            await asyncio.gather(*players)
    finally:
        view.stop()
    return traffic


WARM_UP: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/players/1", None),
    ("POST", "/players/1/score", {"points": 0}),
    ("GET", "/players/1/profile", None),
    ("GET", "/leaderboard", None),
    ("GET", "/export", None),
)


async def _warm_up(client: Any) -> list[int]:
    """One request per route, one at a time, before the clock starts; their statuses.

    A route's first request imports lazily and opens the first connections of
    its pools; with every player arriving at once that stalls the loop and
    the calm phase would start with slow checkouts. Not counted in the traffic,
    nor by the rate limiters: the requests carry no player id, which
    ``player_key`` exempts, so they spend no player's budget and the
    rate-limit figures count the players' requests only (the summary's 429s
    are the limiters' rejections).
    """
    return [
        (await client.request(method, path, json=body)).status_code
        for method, path, body in WARM_UP
    ]


def _cannot_use(argument: str, shown: str, problem: str) -> None:
    """The one line a server that ``argument`` names but cannot be used ends the demo with."""
    print(f"{PROG}: error: {argument}: cannot use {shown}: {problem}", file=sys.stderr, flush=True)


async def _create_schema(service: Any, players: int) -> str | None:
    """Connect and create the demo's table: what went wrong, in one line, or None.

    The first connection is where a database that is down, unknown or
    refusing the user shows; the demo stops there with one line rather than a
    traceback, and waits at most ``CONNECT_SECONDS`` for a host that does not
    answer (asyncpg alone would wait a minute).
    """
    return await _first_contact(service.create_schema(players))


async def _first_contact(contact: Awaitable[object]) -> str | None:
    """Await a first use of a server: what went wrong, in one line, or None."""
    from sqlalchemy.exc import DBAPIError

    try:
        await asyncio.wait_for(contact, CONNECT_SECONDS)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        return f"no answer within {CONNECT_SECONDS:g} s"
    except Exception as exc:  # whatever the driver raises: none of it is the demo's
        error: BaseException = exc
        if isinstance(exc, DBAPIError) and exc.orig is not None:
            # the driver's own error, without SQLAlchemy's SQL and links (the
            # async adapters wrap it once more: asyncpg's is the cause)
            error = exc.orig.__cause__ or exc.orig
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return None


async def _drop_schema(service: Any) -> None:
    try:
        await service.drop_schema()
    except Exception as exc:  # the database may be the thing that broke
        print(f"could not drop the demo table: {type(exc).__name__}", file=sys.stderr)


async def _close_store(limiter: Any) -> None:
    await limiter.store.aclose()  # MemoryStore and RedisStore alike


def _print_final(
    args: argparse.Namespace, traffic: Any, summary: DemoSummary, export: bool
) -> None:
    statuses = " ".join(f"{code}={n}" for code, n in sorted(traffic.statuses.items()))
    lines = [f"requests: total={traffic.total} {statuses}"]
    if traffic.failures:
        failures = " ".join(f"{kind}={n}" for kind, n in sorted(traffic.failures.items()))
        lines.append(f"client failures: {failures}")
    lines += summary.report()
    print(f"\n== summary after {args.duration:g} s, {args.players} players ==")
    for line in lines:  # 80 columns, as the live view
        print(textwrap.fill(line, WIDTH, subsequent_indent="  ", break_long_words=False))
    print(
        "telemetry: exported over OTLP"
        if export
        else "telemetry: not exported (set --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
