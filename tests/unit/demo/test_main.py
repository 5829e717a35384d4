"""The demo's command line: each argument says what it expects; the warm-up spends no budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from otel_backpressure.demo.__main__ import WARM_UP, _warm_up, main, parse_args
from otel_backpressure.demo.app import GameService, build_app, player_policy, proposed_policy
from otel_backpressure.demo.outbound import Profiles, ProfileService
from otel_backpressure.demo.summary import DemoSummary, read_snapshot
from otel_backpressure.ratelimit import RateLimiter
from otel_backpressure.testing import MetricsCapture


def rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line argparse prints for ``argv``, after checking it exits 2."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize(
    ("argument", "value", "expected"),
    [
        ("--duration", "abc", "expected a number of seconds > 0, got 'abc'"),
        ("--duration", "0", "expected a number of seconds > 0, got '0'"),
        ("--duration", "nan", "expected a number of seconds > 0, got 'nan'"),
        ("--duration", "inf", "expected a number of seconds > 0, got 'inf'"),
        ("--interval", "abc", "expected a number of seconds > 0, got 'abc'"),
        ("--interval", "-1", "expected a number of seconds > 0, got '-1'"),
        ("--players", "abc", "expected a whole number of players >= 1, got 'abc'"),
        ("--players", "0", "expected a whole number of players >= 1, got '0'"),
        ("--players", "2.5", "expected a whole number of players >= 1, got '2.5'"),
        ("--pool-size", "abc", "expected a whole number >= 0 (0: no limit), got 'abc'"),
        ("--pool-size", "-1", "expected a whole number >= 0 (0: no limit), got '-1'"),
        ("--max-overflow", "x", "expected a whole number >= -1 (0: no overflow, -1: no limit)"),
        ("--max-overflow", "-2", "expected a whole number >= -1 (0: no overflow, -1: no limit)"),
        ("--pool-timeout", "abc", "expected a number of seconds >= 0, got 'abc'"),
        ("--pool-timeout", "-0.5", "expected a number of seconds >= 0, got '-0.5'"),
        ("--seed", "abc", "expected a whole number, got 'abc'"),
        ("--otlp-endpoint", "localhost", "expected an http:// or https:// URL"),
        ("--otlp-endpoint", "http://[", "expected an http:// or https:// URL"),
        ("--otlp-protocol", "udp", "invalid choice: 'udp'"),
        ("--redis-url", "localhost:6379", "expected a redis://, rediss:// or unix:// URL"),
        ("--limiter-redis-url", "http://x", "expected a redis://, rediss:// or unix:// URL"),
        ("--summary-json", "/no/such/directory/summary.json", "no directory '/no/such/directory'"),
        ("--summary-json", ".", "expected a file to write, got the directory '.'"),
    ],
)
def test_a_bad_value_names_its_argument_and_what_it_expects(
    argument: str, value: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = rejected([argument, value], capsys)
    assert f"argument {argument}: " in line, line
    assert expected in line, line
    assert "invalid" not in line or argument == "--otlp-protocol", line  # not argparse's own


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:secret@[bad/0",  # urlsplit raises: no netloc to take it from
        "redis://user:sec/ret@h/0",  # an unencoded "/" ends urlsplit's netloc early
        "redis://user:sec#ret@h/0",  # so does "#"
        "redos://user:secret@h/0",
    ],
)
@pytest.mark.parametrize("argument", ["--redis-url", "--limiter-redis-url"])
def test_a_bad_redis_url_never_shows_its_password(
    argument: str, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = rejected([argument, url], capsys)
    assert f"argument {argument}: expected a redis://" in line, line
    assert "secret" not in line, line
    assert "sec" not in line.partition(" got ")[2], line


@pytest.mark.parametrize(
    "url", ["grpc://user:secret@collector:4317", "http://user:secret@[collector:4317"]
)
def test_a_bad_otlp_endpoint_never_shows_its_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = rejected(["--otlp-endpoint", url], capsys)
    assert "argument --otlp-endpoint: expected an http:// or https:// URL" in line, line
    assert "secret" not in line, line
    assert "user:***@" in line, line


@pytest.mark.parametrize(
    ("argv", "attribute", "value"),
    [
        # what SQLAlchemy's QueuePool accepts: no overflow, unlimited overflow, no size limit
        (["--max-overflow", "0"], "max_overflow", 0),
        (["--max-overflow", "-1"], "max_overflow", -1),
        (["--pool-size", "0"], "pool_size", 0),
        (["--pool-timeout", "0"], "pool_timeout", 0.0),  # fail at once when the pool is full
        (["--seed", "-3"], "seed", -3),
        (["--duration", "0.5"], "duration", 0.5),
        (["--otlp-endpoint", "https://collector:4318"], "otlp_endpoint", "https://collector:4318"),
        (["--redis-url", "redis://127.0.0.1:6379/0"], "redis_url", "redis://127.0.0.1:6379/0"),
        (["--limiter-redis-url", "unix:///tmp/r.sock"], "limiter_redis_url", "unix:///tmp/r.sock"),
    ],
)
def test_every_value_the_libraries_accept_is_accepted(
    argv: list[str], attribute: str, value: object
) -> None:
    assert getattr(parse_args(argv), attribute) == value


def test_the_defaults_are_the_readme_s(tmp_path: Path) -> None:
    args = parse_args([])
    assert (args.duration, args.players, args.database_url) == (20.0, 20, None)
    assert (args.pool_size, args.max_overflow, args.pool_timeout) == (4, 2, 0.25)
    assert parse_args(["--summary-json", str(tmp_path / "s.json")]).summary_json == (
        tmp_path / "s.json"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1/test",  # the README's; nothing connects yet
        "postgresql+asyncpg://postgres@127.0.0.1:1/test",  # nobody there: found in run()
        "sqlite+aiosqlite:///game.db",
    ],
)
def test_usable_database_urls_are_accepted_without_connecting(url: str) -> None:
    assert parse_args(["--database-url", url]).database_url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nonsense://x", "SQLAlchemy has no dialect+driver 'nonsense'"),
        ("postgresql+nonsense://h/db", "SQLAlchemy has no dialect+driver 'postgresql+nonsense'"),
        ("nonsense", "expected a SQLAlchemy URL (dialect+driver://user@host/database)"),
        ("sqlite:///game.db", "driver 'pysqlite' is not async"),
        ("postgresql+psycopg2://postgres:secret@h/db", "driver 'psycopg2' is not async"),
        ("sqlite+aiosqlite://", "its pool takes no --pool-size/--max-overflow/--pool-timeout"),
        # make_url raises ValueError, not ArgumentError, for a port that is no number
        ("postgresql+asyncpg://postgres:secret@h:5432x/db", "expected a SQLAlchemy URL"),
        ("postgresql+asyncpg://postgres:secret@[::1/db", "expected a SQLAlchemy URL"),
        # no "://": urlsplit finds no password, but the text has one
        ("postgresql+asyncpg//postgres:secret@h/db", "expected a SQLAlchemy URL"),
    ],
)
def test_an_unusable_database_url_is_an_argument_error(
    url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = rejected(["--database-url", url], capsys)
    assert "argument --database-url: " in line, line
    assert expected in line, line
    assert "secret" not in line, line


@pytest.fixture
async def app(tmp_path: Path, metrics: MetricsCapture) -> AsyncIterator[Any]:
    """The demo's app as ``run`` builds it, its limiters metered into ``metrics``."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/game.db")
    service = GameService(engine, suffix="test")
    await service.create_schema(players=3)
    limiter = RateLimiter([player_policy()], meter_provider=metrics.meter_provider)
    proposed = RateLimiter([proposed_policy()], meter_provider=metrics.meter_provider)
    with ProfileService() as upstream:
        profiles = Profiles(upstream.url, redis_url=None)
        try:
            yield build_app(service, limiter, proposed, profiles)
        finally:
            await profiles.aclose()
            await engine.dispose()


async def test_the_warm_up_reaches_every_route_and_no_rate_limit_figure(
    app: Any, metrics: MetricsCapture
) -> None:
    """Every warm-up request gets through, and the rate-limit view still reads zero after it.

    The warm-up used to spend player 0's budget: its fifth request got a 429
    (so that route stayed cold) and the view opened on "allowed 4, rejected 1".
    """
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        statuses = await _warm_up(client)
    summary = DemoSummary()
    summary.update(read_snapshot(metrics.reader))
    counted = {
        policy: {result: n for result, n in results.items() if n}
        for policy, results in summary.rate_limits().items()
    }
    assert counted == {policy: {} for policy in counted}, counted
    assert statuses == [200] * len(WARM_UP)


def test_a_bad_otel_variable_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The arguments are checked by parse_args; the OTEL_* variables the demo reads through
    configure_telemetry() end the same way: one line naming the variable, exit 2."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "bogus")
    assert main(["--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: OTEL_EXPORTER_OTLP_PROTOCOL='bogus' is not supported" in err
    assert "Traceback" not in err
