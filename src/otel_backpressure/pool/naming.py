"""Default pool names: ``server.address:server.port/db.namespace``, unique while alive.

Every name ever reported stays in the SDK's cumulative state, so a process that
creates and drops engines must not mint a new name for each one. Two live pools
on one database get ``name`` and ``name#2``; once one is gone its suffix is free
again and the next pool takes the lowest free one.

Example::

    from otel_backpressure.pool.naming import NAMES, url_name

    name = NAMES.acquire(url_name(engine.url))   # "db.example:5432/app"
    NAMES.release(name)
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import URL

__all__ = ["NAMES", "PoolNames", "dsn_name", "url_name"]

_logger = logging.getLogger(__name__)


class PoolNames:
    """Hands out the lowest free ``#n`` suffix per base name."""

    __slots__ = ("_given", "_lock", "_taken")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[str, set[int]] = {}  # base -> suffix numbers in use
        self._given: dict[str, tuple[str, int]] = {}  # name -> (base, number)

    def acquire(self, base: str) -> str:
        with self._lock:
            taken = self._taken.setdefault(base, set())
            number = 1
            while number in taken:
                number += 1
            taken.add(number)
            name = base if number == 1 else f"{base}#{number}"
            self._given[name] = (base, number)
        return name

    def release(self, name: str) -> None:
        with self._lock:
            given = self._given.pop(name, None)
            if given is None:
                return
            base, number = given
            taken = self._taken[base]
            taken.discard(number)
            if not taken:
                del self._taken[base]

    def __len__(self) -> int:
        return len(self._given)

    def __repr__(self) -> str:
        return f"PoolNames(live={len(self)})"


NAMES = PoolNames()


def _join(host: str | None, port: int | None, database: str | None) -> str:
    address = host or "localhost"
    if port:
        address = f"{address}:{port}"
    return f"{address}/{database}" if database else address


def url_name(url: URL) -> str:
    """The default name for a SQLAlchemy ``URL``; never includes credentials."""
    if url.get_backend_name() == "sqlite":
        database = url.database
        if not database or database == ":memory:" or "mode=memory" in str(url.query):
            return ":memory:"
        return os.path.basename(database)
    return _join(url.host, url.port, url.database)


def dsn_name(dsn: str | None, kwargs: dict[str, Any]) -> str:
    """The default name for asyncpg connect arguments (a DSN and/or keywords)."""
    host = kwargs.get("host")
    port = kwargs.get("port")
    database = kwargs.get("database")
    if dsn:
        try:
            parts = urlsplit(dsn)
            host = host or parts.hostname
            port = port or parts.port
            database = database or parts.path.lstrip("/") or None
        except ValueError:
            _logger.debug("Unparseable DSN; naming the pool by its keywords only")
    if isinstance(host, (list, tuple)):
        host = host[0] if host else None
    if isinstance(port, (list, tuple)):
        port = port[0] if port else None
    return _join(
        str(host) if host else None, int(port) if port else None, str(database or "") or None
    )
