"""Default pool names say where the driver really connects, as the driver itself resolves it.

Table tests: every form asyncpg and libpq (psycopg) document for host, port
and database, compared with the drivers' own parsers (asyncpg's
``connect_utils``; libpq's ``PQconninfoParse`` through psycopg, with psycopg's
environment defaults), and through SQLAlchemy's ``create_connect_args`` (psycopg2
and, on SQLAlchemy 2, psycopg 3). No
name ever holds a credential, even from a malformed DSN.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest
from asyncpg import connect_utils
from psycopg._conninfo_utils import get_param
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from otel_backpressure.pool._naming import (
    ServerAddress,
    asyncpg_server,
    libpq_server,
    server_name,
    url_name,
)
from sqlalchemy_compat import SQLALCHEMY_VERSION, requires_sqlalchemy2

QUERY_HOSTS = SQLALCHEMY_VERSION >= (2, 0, 18)  # asyncpg URLs' query hosts and ports

ENV_KEYS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ENV_KEYS:  # set, then deleted: so a test may set it and it is restored
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    passfile = tmp_path / "pgpass"
    passfile.write_text("")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))  # asyncpg's parser reads it


def _asyncpg_resolves(dsn: str | None, **kwargs: Any) -> tuple[list[Any], str]:
    """(addresses in connection order, database) from asyncpg's own parser."""
    parameters = inspect.signature(connect_utils._parse_connect_dsn_and_args).parameters
    arguments = dict.fromkeys(parameters)
    arguments.update(dsn=dsn, **kwargs)
    addresses, params = connect_utils._parse_connect_dsn_and_args(**arguments)
    return list(addresses), params.database


def _ours_as_asyncpg(server: ServerAddress) -> list[Any]:
    return [
        f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        for host, port in zip(server.hosts, server.ports, strict=True)
    ]


ASYNCPG_CASES: list[tuple[str | None, dict[str, Any], dict[str, str], str]] = [
    # (dsn, keywords, environment, expected name)
    ("postgresql://app:pw@db.internal:6432/orders", {}, {}, "db.internal:6432/orders"),
    ("postgresql://app:pw@db.internal/orders", {}, {}, "db.internal:5432/orders"),
    # the example: query host and port, no host part
    ("postgresql://postgres@/test?host=127.0.0.1&port=5432", {}, {}, "127.0.0.1:5432/test"),
    ("postgresql://u@h1:5433,h2,[::1]:5435/db", {}, {}, "h1:5433,h2:5432,[::1]:5435/db"),
    ("postgresql://u@[2001:db8::1]/db", {}, {}, "[2001:db8::1]:5432/db"),
    (
        "postgresql:///db?host=/var/run/postgresql",
        {},
        {},
        "/var/run/postgresql/.s.PGSQL.5432/db",
    ),
    ("postgresql://%2Ftmp%2Fpg:6000/db", {}, {}, "/tmp/pg/.s.PGSQL.6000/db"),
    (None, {"host": ["a", "b"], "port": [5432, 5433], "database": "x"}, {}, "a:5432,b:5433/x"),
    ("postgresql://u@other:1/db", {"host": "h", "port": 6000}, {}, "h:6000/db"),
    (
        "postgresql://",
        {},
        {"PGHOST": "envhost", "PGPORT": "7000", "PGDATABASE": "envdb"},
        "envhost:7000/envdb",
    ),
    ("postgresql://h/db", {}, {"PGPORT": "7001"}, "h:7001/db"),
    ("postgresql://h1:5433/db?port=6000", {}, {}, "h1:5433/db"),  # the host part's port wins
    ("postgresql://u@h?dbname=qdb", {}, {}, "h:5432/qdb"),
    ("postgresql://u@h/?dbname=qdb", {}, {}, "h:5432"),  # a path, even empty, wins
    ("postgresql://u@h", {}, {}, "h:5432"),  # the database defaults to the user: left out
]


@pytest.mark.parametrize(("dsn", "keywords", "environment", "expected"), ASYNCPG_CASES)
def test_asyncpg_names_match_asyncpg(
    dsn: str | None,
    keywords: dict[str, Any],
    environment: dict[str, str],
    expected: str,
) -> None:
    ours = asyncpg_server(dsn, environ=environment, **keywords)
    os.environ.update(environment)  # asyncpg's parser reads the process environment
    addresses, database = _asyncpg_resolves(dsn, **keywords)
    assert _ours_as_asyncpg(ours) == addresses
    assert ours.database in (database, None)
    if ours.database is None:  # asyncpg's default, the user name (or ''), is not shown
        assert database in ("u", "")
    assert ours.name == expected


def test_asyncpg_default_host_is_the_first_socket_it_would_try() -> None:
    ours = asyncpg_server("postgresql://u@/db")
    addresses, _ = _asyncpg_resolves("postgresql://u@/db")
    assert _ours_as_asyncpg(ours)[0] in addresses
    tried = [a for a in addresses if isinstance(a, str) and os.path.exists(a)]
    assert _ours_as_asyncpg(ours)[0] == (tried[0] if tried else ("localhost", 5432))


def _libpq_resolves(conninfo: str, **kwargs: Any) -> tuple[list[tuple[str, int]], str | None]:
    """(host, port) per host and the database, as libpq parses and psycopg defaults them."""
    params = conninfo_to_dict(conninfo, **kwargs)
    hosts = (get_param(params, "hostaddr") or get_param(params, "host") or "").split(",")
    if hosts == [""]:
        hosts = ["/var/run/postgresql"]  # libpq's compiled-in socket directory here
    ports = (get_param(params, "port") or "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return [(h, int(p or 5432)) for h, p in zip(hosts, ports, strict=True)], get_param(
        params, "dbname"
    )


LIBPQ_CASES: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    ("host=db1,db2 port=5433 dbname=app password=x", {}, {}, "db1:5433,db2:5433/app"),
    ("postgresql://u:pw@h1:5433,h2:5434/db", {}, {}, "h1:5433,h2:5434/db"),
    ("postgresql://u:pw@h1:5433,h2/db", {}, {}, "h1:5433,h2:5432/db"),
    ("postgresql://postgres@/test?host=127.0.0.1&port=5432", {}, {}, "127.0.0.1:5432/test"),
    ("host=/tmp dbname=x", {}, {}, "/tmp/.s.PGSQL.5432/x"),
    ("hostaddr=10.0.0.1 host=name dbname=d", {}, {}, "10.0.0.1:5432/d"),
    ("dbname=d", {}, {"PGHOST": "envhost", "PGPORT": "7000"}, "envhost:7000/d"),
    ("postgresql://[::1]:5433/db", {}, {}, "[::1]:5433/db"),
    ("host=a dbname=b", {"host": "c", "port": 6000}, {}, "c:6000/b"),
    ("host='quoted host' dbname='my db'", {}, {}, "quoted host:5432/my db"),
    ("", {}, {"PGDATABASE": "envdb"}, "/var/run/postgresql/.s.PGSQL.5432/envdb"),
    ("user=u", {}, {}, "/var/run/postgresql/.s.PGSQL.5432"),  # dbname defaults to the user
]


@pytest.mark.parametrize(("conninfo", "keywords", "environment", "expected"), LIBPQ_CASES)
def test_libpq_names_match_libpq(
    conninfo: str,
    keywords: dict[str, Any],
    environment: dict[str, str],
    expected: str,
) -> None:
    ours = libpq_server(conninfo, environ=environment, **keywords)
    os.environ.update(environment)  # psycopg's defaults read the process environment
    addresses, database = _libpq_resolves(conninfo, **keywords)
    assert list(zip(ours.hosts, ours.ports, strict=True)) == addresses
    assert ours.database == database
    assert ours.name == expected


SECRETS = ("alice", "Zq1", "Xy7")
MALFORMED = [
    "postgresql://alice:Zq1/Xy7@host/db",
    "postgresql://alice:1234/Xy7@host/db",  # asyncpg would take alice:1234 as host:port
    "postgresql://alice:Zq1?Xy7@host/db",
    "postgresql://alice:Zq1#Xy7@host/db",
    "postgresql://alice:Zq1@Xy7@host/db",
    "postgresql://alice:Zq1Xy7@host:notaport/db",
    "postgresql://alice:Zq1Xy7@host/db?port=x",
    "user=alice password=Zq1 Xy7 host=h",
    "user=alice password='Zq1Xy7 host=h",
    "postgresql://alice:Zq1Xy7@ho st/db",
]


@pytest.mark.parametrize("dsn", MALFORMED)
def test_malformed_dsns_never_show_credentials(dsn: str) -> None:
    for resolve in (asyncpg_server, libpq_server):
        name = server_name(resolve, dsn)
        assert not any(secret in name for secret in SECRETS), (resolve.__name__, name)


def _libpq_drivers(*cases: Any) -> list[Any]:
    """Each case for psycopg2 (SQLAlchemy 1.4 and 2.x) and psycopg 3 (its dialect is 2.0+)."""
    return [
        pytest.param(
            *(c.replace("postgresql+libpq", f"postgresql+{driver}") for c in case),
            marks=marks,
        )
        for case in cases
        for driver, marks in (("psycopg2", ()), ("psycopg", requires_sqlalchemy2))
    ]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://alice:Zq1@Xy7@host/db",
        "postgresql+asyncpg://alice:Zq1%40Xy7@host:5433/db",
        *_libpq_drivers(("postgresql+libpq://alice:Zq1:Xy7@host/db",)),
    ],
)
def test_sqlalchemy_urls_never_show_credentials(url: str) -> None:
    engine = create_engine(url) if "psycopg" in url else create_async_engine(url).sync_engine
    name = url_name(engine.url, engine.dialect)
    assert not any(secret in name for secret in SECRETS), name
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+asyncpg://postgres@/test?host=127.0.0.1&port=5432", "127.0.0.1:5432/test"),
        # SQLAlchemy 2.0.18+ passes the query's hosts and ports to asyncpg over
        # the URL's; before (1.4 too) it passes them verbatim: "h2:5434" is then
        # a host name, and two of them a tuple asyncpg cannot connect with
        (
            "postgresql+asyncpg://u:pw@h1:5433/db?host=h2:5434",
            "h2:5434/db" if QUERY_HOSTS else "[h2:5434]:5433/db",
        ),
        (
            "postgresql+asyncpg://u@/db?host=h1:5433&host=h2:5434",
            "h1:5433,h2:5434/db" if QUERY_HOSTS else "[h1:5433]:5432,[h2:5434]:5432/db",
        ),
        ("postgresql+asyncpg://u@[::1]:5433/db", "[::1]:5433/db"),
        (
            "postgresql+asyncpg://u@/db?host=/var/run/postgresql",
            "/var/run/postgresql/.s.PGSQL.5432/db",
        ),
        *_libpq_drivers(
            ("postgresql+libpq://u:pw@db.internal/orders", "db.internal:5432/orders"),
            ("postgresql+libpq://u@/db?host=h1:5433&host=h2:5434", "h1:5433,h2:5434/db"),
            ("postgresql+libpq://u@/db?host=/tmp", "/tmp/.s.PGSQL.5432/db"),
        ),
        ("mysql+pymysql://root@/inventory", "localhost/inventory"),
        ("mysql+pymysql://root:pw@[::1]:3307/inventory", "[::1]:3307/inventory"),
        ("sqlite:////var/lib/app/data.sqlite", "data.sqlite"),
        ("sqlite://", ":memory:"),
    ],
)
def test_sqlalchemy_urls_name_what_the_dialect_connects_to(url: str, expected: str) -> None:
    parsed = make_url(url)
    if parsed.get_driver_name() == "pymysql":
        assert url_name(parsed) == expected  # no driver installed: the URL's own parts
        return
    engine = create_async_engine(url).sync_engine if "asyncpg" in url else create_engine(url)
    assert url_name(engine.url, engine.dialect) == expected
    _, cparams = engine.dialect.create_connect_args(engine.url)
    usable = not isinstance(cparams.get("host"), tuple)  # see the hosts' rows above
    if parsed.get_driver_name() == "asyncpg" and usable:  # and what asyncpg makes of them
        addresses, _ = _asyncpg_resolves(
            None, **{k: cparams.get(k) for k in ("host", "port", "database")}
        )
        assert _ours_as_asyncpg(asyncpg_server(**cparams)) == addresses
    engine.dispose()
