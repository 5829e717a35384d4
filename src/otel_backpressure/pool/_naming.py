"""Default pool names: ``server.address[:server.port]/db.namespace``, never credentials.

The registry makes them unique among live pools (``name#2``).

Example::

    from otel_backpressure.pool._naming import url_name

    url_name(engine.url)   # "db.example:5432/app"
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # an asyncpg-only application must not import SQLAlchemy for a name
    from sqlalchemy.engine import URL

__all__ = ["dsn_name", "url_name"]

_logger = logging.getLogger(__name__)


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
