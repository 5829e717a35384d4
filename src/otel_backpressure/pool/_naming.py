"""Default pool names: ``server.address[:server.port]/db.namespace`` as the driver resolves them.

A name says what the driver really connects to: the hosts (several, comma
separated, in the driver's order; IPv6 literals in brackets; a Unix socket as
its socket file), each with its port, and the database. It never holds any
part of the credentials: a user or password is never read, a database that
defaults to the user name is left out, and a DSN whose credentials cannot be
told apart from its host (an unescaped ``/``, ``?``, ``#`` or ``@`` in a
password) is named ``unknown`` rather than guessed at. The registry makes
names unique among live pools (``name#2``).

``asyncpg_server()`` follows ``asyncpg.connect_utils``, ``libpq_server()`` libpq
(psycopg, psycopg2, psycopg_pool), ``url_name()`` a SQLAlchemy URL through its
dialect's own ``create_connect_args()``.

Example::

    libpq_server("host=db1,db2 port=5433 dbname=app password=x").name
    # "db1:5433,db2:5433/app"
    asyncpg_server("postgresql://u:pw@/app?host=127.0.0.1&port=5432").name
    # "127.0.0.1:5432/app"
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING:  # an asyncpg-only application must not import SQLAlchemy for a name
    from sqlalchemy.engine import URL

__all__ = ["UNKNOWN", "ServerAddress", "asyncpg_server", "libpq_server", "url_name"]

#: The name of a pool whose DSN cannot be read without risking its credentials.
UNKNOWN = "unknown"

_PORT = 5432
# asyncpg tries these in order when no host is given (connect_utils)
_ASYNCPG_SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql", "/tmp", "/private/tmp")
# libpq's compiled-in socket directory in Debian's and psycopg's binary builds
_LIBPQ_SOCKET_DIR = "/var/run/postgresql"
_HOST_CHARS = re.compile(r"[A-Za-z0-9._~%:\[\],/-]*")


class UnreadableDSN(ValueError):
    """A DSN that cannot be read without risking its credentials (never shown)."""


@dataclass(frozen=True)
class ServerAddress:
    """Where a driver connects: hosts (names, IP literals or socket directories),
    one port each, and the database (None when defaulted to the user name)."""

    hosts: tuple[str, ...]
    ports: tuple[int, ...]
    database: str | None

    def __post_init__(self) -> None:
        # an @ in a host is a credential that a parser took for one (user:pw@x@host)
        if any("@" in host or not host.isprintable() for host in self.hosts):
            raise UnreadableDSN

    @property
    def name(self) -> str:
        """``host:port[,host:port...][/database]``."""
        parts = []
        for host, port in zip(self.hosts, self.ports, strict=True):
            if host.startswith("/"):  # a Unix socket: its file, the port is in its name
                parts.append(f"{host.rstrip('/')}/.s.PGSQL.{port}")
            elif ":" in host:
                parts.append(f"[{host}]:{port}")
            else:
                parts.append(f"{host}:{port}")
        address = ",".join(parts)
        return f"{address}/{self.database}" if self.database else address


# -- reading DSNs, credentials never touched -------------------------------------------------


def _uri(dsn: str) -> tuple[str, str | None, dict[str, str]]:
    """(hostspec, database path or None without one, query) of a ``postgresql://``
    URI. Raises ``UnreadableDSN``."""
    _, _, rest = dsn.partition("://")
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found >= 0:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    hostspec = netloc.rpartition("@")[2]  # everything before the last @ is credentials
    if "@" in tail or not _HOST_CHARS.fullmatch(hostspec):
        raise UnreadableDSN  # a password with / ? # or @ in it: its end is a guess
    path, _, query = tail.partition("?")
    query = query.partition("#")[0]
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise UnreadableDSN from None
    path = path.partition("#")[0]
    return hostspec, unquote(path[1:]) if path else None, params


_KEYWORD = re.compile(r"\s*([A-Za-z_]+)\s*=\s*")


def _keywords(conninfo: str) -> dict[str, str]:
    """libpq's ``keyword = value`` form (values quoted with '' and \\ escapes)."""
    params: dict[str, str] = {}
    position = 0
    while position < len(conninfo):
        if not conninfo[position:].strip():
            break
        match = _KEYWORD.match(conninfo, position)
        if match is None:
            raise UnreadableDSN
        position = match.end()
        value: list[str] = []
        quoted = position < len(conninfo) and conninfo[position] == "'"
        position += quoted
        while position < len(conninfo):
            char = conninfo[position]
            if char == "\\" and position + 1 < len(conninfo):
                value.append(conninfo[position + 1])
                position += 2
                continue
            if (quoted and char == "'") or (not quoted and char.isspace()):
                break
            value.append(char)
            position += 1
        else:
            if quoted:
                raise UnreadableDSN  # an unterminated quote
        position += quoted
        params[match.group(1)] = "".join(value)
    return params


def _split_hostspec(hostspec: str) -> tuple[list[str], list[str]]:
    """Hosts and the ports written next to them ('' where none) of ``h1:p1,[::1]:p2``."""
    hosts, ports = [], []
    for spec in hostspec.split(","):
        if spec.startswith("["):
            address, _, after = spec[1:].partition("]")
            port = after[1:] if after.startswith(":") else ""
        elif spec.startswith("/"):
            address, port = spec, ""
        else:
            address, _, port = spec.partition(":")
        hosts.append(unquote(address))
        ports.append(unquote(port))
    return hosts, ports


def _ports(spec: Any, count: int, default: int) -> tuple[int, ...]:
    """One port per host from a port, a list, or ``"5432,5433"``; a single one for all."""
    if isinstance(spec, (list, tuple)):
        values = [int(p) for p in spec]
    elif spec in (None, ""):
        values = []
    else:
        values = [int(p) if p != "" else default for p in str(spec).split(",")]
    if not values:
        values = [default]
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise UnreadableDSN
    return tuple(values)


def _as_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value).split(",")


# -- the two drivers' rules ------------------------------------------------------------------


def _default_port(environ: Mapping[str, str]) -> Any:
    return environ.get("PGPORT") or None


def asyncpg_server(
    dsn: str | None = None,
    *,
    host: Any = None,
    port: Any = None,
    database: str | None = None,
    environ: Mapping[str, str] | None = None,
    **_: Any,
) -> ServerAddress:
    """Where ``asyncpg.connect(dsn, host=, port=, database=)`` connects, in its order.

    Keywords beat the DSN; the DSN's host part beats its ``?host=``/``?port=``;
    then ``PGHOST``/``PGPORT``/``PGDATABASE``; then the first Unix socket that
    exists among asyncpg's candidates, or ``localhost``, port 5432. Raises
    ``UnreadableDSN`` for a DSN it cannot read safely.
    """
    env = os.environ if environ is None else environ
    hosts: list[str] = list(host) if isinstance(host, (list, tuple)) else [host] if host else []
    ports: list[str] = []
    if dsn:
        hosts, ports, port, database = _asyncpg_dsn(dsn, hosts, port, database)
    if not hosts and env.get("PGHOST"):
        hosts, ports = _split_hostspec(env["PGHOST"])
    if not hosts:
        hosts = [_first_socket(env, port)]
    resolved = _hostlist_ports(hosts, ports, port, env)
    if database is None:
        database = env.get("PGDATABASE")
    return ServerAddress(tuple(hosts), resolved, database or None)


def _asyncpg_dsn(
    dsn: str, hosts: list[str], port: Any, database: str | None
) -> tuple[list[str], list[str], Any, str | None]:
    """What a DSN adds to asyncpg's keywords: (hosts, their written ports, port, database)."""
    hostspec, path, query = _uri(dsn)
    ports: list[str] = []
    if not hosts and hostspec:
        hosts, ports = _split_hostspec(hostspec)
    elif port in (None, "") and query.get("port"):  # a host part brings its own ports
        port = query["port"]
    if not hosts and query.get("host"):
        hosts, ports = _split_hostspec(query["host"])
    if database is None:  # a path, even "/", beats the query
        database = path if path is not None else query.get("dbname", query.get("database"))
    return hosts, ports, port, database


def _hostlist_ports(
    hosts: Sequence[str], written: Sequence[str], port: Any, env: Mapping[str, str]
) -> tuple[int, ...]:
    """A port per host: the explicit one(s), else each host's own, else PGPORT, else 5432."""
    if port not in (None, "", []):
        return _ports(port, len(hosts), _PORT)
    defaults = _ports(_default_port(env), len(hosts), _PORT)
    return tuple(
        int(written[i]) if i < len(written) and written[i] else defaults[i]
        for i in range(len(hosts))
    )


def _first_socket(env: Mapping[str, str], port: Any) -> str:
    number = _ports(port or _default_port(env), 1, _PORT)[0]
    for directory in _ASYNCPG_SOCKET_DIRS:
        if os.path.exists(f"{directory}/.s.PGSQL.{number}"):
            return directory
    return "localhost"


def libpq_server(
    conninfo: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **params: Any,
) -> ServerAddress:
    """Where libpq (psycopg, psycopg2, psycopg_pool) connects for ``conninfo`` and
    keyword ``params`` (keywords beat the conninfo, as ``psycopg.connect`` does).

    A URI's query parameters beat its host part; ``hostaddr`` is the address
    connected to when given; then ``PGHOST``/``PGHOSTADDR``/``PGPORT``/
    ``PGDATABASE``; then libpq's Unix socket directory, port 5432. Raises
    ``UnreadableDSN`` for a conninfo it cannot read safely.
    """
    env = os.environ if environ is None else environ
    found, written = _libpq_conninfo(conninfo) if conninfo else ({}, [])
    found.update({k: v for k, v in params.items() if v is not None})
    hosts = _as_list(found.get("hostaddr") or found.get("host") or "")
    if hosts == [""]:
        hosts = _as_list(env.get("PGHOSTADDR") or env.get("PGHOST") or _LIBPQ_SOCKET_DIR)
        written = []
    if isinstance(found.get("host"), str) and "hostaddr" not in found:
        written = []  # a "host=" keyword lists hosts only; ports come from "port="
    ports = _hostlist_ports(hosts, written, found.get("port"), env)
    database = found.get("dbname") or env.get("PGDATABASE") or None
    return ServerAddress(tuple(hosts), ports, database)


def _libpq_conninfo(conninfo: str) -> tuple[dict[str, Any], list[str]]:
    """A conninfo's keywords, and the ports written next to a URI's hosts."""
    if "://" not in conninfo:
        return dict(_keywords(conninfo)), []
    hostspec, path, query = _uri(conninfo)
    found: dict[str, Any] = {}
    written: list[str] = []
    if hostspec:
        found["host"], written = _split_hostspec(hostspec)
    if path:
        found["dbname"] = path
    found.update(query)  # libpq: the query beats the URI's parts
    return found, written


# -- SQLAlchemy ----------------------------------------------------------------------------


def url_name(url: URL, dialect: Any = None) -> str:
    """The default name for a SQLAlchemy ``URL`` (through ``dialect``'s own
    ``create_connect_args()`` for PostgreSQL drivers); never credentials."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database
        if not database or database == ":memory:" or "mode=memory" in str(url.query):
            return ":memory:"
        return os.path.basename(database)
    if backend == "postgresql" and dialect is not None:
        try:
            _, cparams = dialect.create_connect_args(url)
            driver = url.get_driver_name()
            if driver == "asyncpg":
                return asyncpg_server(**cparams).name
            if driver in ("psycopg", "psycopg2", "psycopg2cffi", "pg8000"):
                return libpq_server(**_libpq_params(cparams)).name
        except Exception:  # a name must never fail instrumenting, nor quote the URL
            return UNKNOWN
    address = url.host or "localhost"
    if ":" in address:
        address = f"[{address}]"
    if url.port:
        address = f"{address}:{url.port}"
    return f"{address}/{url.database}" if url.database else address


def _libpq_params(cparams: Mapping[str, Any]) -> dict[str, Any]:
    """SQLAlchemy's connect arguments as libpq keywords (pg8000 says ``database``)."""
    params = {k: cparams[k] for k in ("host", "hostaddr", "port", "dbname") if k in cparams}
    if "database" in cparams and "dbname" not in params:
        params["dbname"] = cparams["database"]
    conninfo = cparams.get("dsn") or cparams.get("conninfo")
    return {"conninfo": conninfo, **params} if conninfo else params


def server_name(resolve: Any, *args: Any, **kwargs: Any) -> str:
    """``resolve(*args, **kwargs).name``, or ``UNKNOWN`` for a DSN it cannot read safely."""
    try:
        return str(resolve(*args, **kwargs).name)
    except Exception:  # a name must never fail instrumenting, nor quote the DSN
        return UNKNOWN
