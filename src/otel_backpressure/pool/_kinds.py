"""Every pool kind as data: its library, its source class, where its pools are created.

Kept apart from ``_registry`` so that the instrumentor can patch the
``created_at`` targets without importing the registry and the metrics: those
are imported when the application creates its first pool (see ``_integration``).
How to add a kind is in ``_registry``'s docstring.

Example::

    kind = SOURCES[0]
    kind.created_at     # ("sqlalchemy.engine.base", "Engine.__init__")
    kind.load()         # SQLAlchemyPoolSource, or None while SQLAlchemy is not imported
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    from otel_backpressure.pool._source import PoolSourceClass

__all__ = ["READ_ONLY_TARGETS", "SOURCES", "TARGETS", "SourceKind", "targets"]


# A plain class, not a dataclass or a NamedTuple: this module is imported
# whenever the instrumentor loads (see _patching).
class SourceKind:
    """One pool kind: the library that makes it, its source, where its pools are created."""

    __slots__ = ("created_at", "library", "source")

    def __init__(self, library: str, source: str, created_at: tuple[str, str]) -> None:
        self.library = library  # a module in sys.modules once the application uses the library
        self.source = source  # "module:Class" of the PoolSource
        self.created_at = created_at  # (module, "Class.method") the instrumentor patches

    def load(self) -> PoolSourceClass | None:
        """The source class, or None while the library is not imported."""
        if self.library not in sys.modules:
            return None
        module, _, name = self.source.partition(":")
        return cast("PoolSourceClass", getattr(importlib.import_module(module), name))

    def __repr__(self) -> str:
        return f"SourceKind({self.library!r}, {self.source!r}, {self.created_at!r})"


#: Every pool kind, one line each.
SOURCES: Final = (
    SourceKind(
        "sqlalchemy",
        "otel_backpressure.pool._sqlalchemy:SQLAlchemyPoolSource",
        ("sqlalchemy.engine.base", "Engine.__init__"),
    ),
    SourceKind(
        "asyncpg",
        "otel_backpressure.pool._asyncpg:AsyncpgPoolSource",
        ("asyncpg.pool", "Pool.__init__"),
    ),
    # psycopg_pool: every pool class (null pools too) runs its base's __init__
    SourceKind(
        "psycopg_pool",
        "otel_backpressure.pool._psycopg:PsycopgPoolSource",
        ("psycopg_pool.pool", "ConnectionPool.__init__"),
    ),
    SourceKind(
        "psycopg_pool",
        "otel_backpressure.pool._psycopg:PsycopgPoolSource",
        ("psycopg_pool.pool_async", "AsyncConnectionPool.__init__"),
    ),
    # redis-py: BlockingConnectionPool and the sentinel pools run ConnectionPool.__init__
    SourceKind(
        "redis",
        "otel_backpressure.pool._redis:RedisPoolSource",
        ("redis.connection", "ConnectionPool.__init__"),
    ),
    SourceKind(
        "redis",
        "otel_backpressure.pool._redis:RedisPoolSource",
        ("redis.asyncio.connection", "ConnectionPool.__init__"),
    ),
    # httpx: its transports make an httpcore pool (or proxy pool, a subclass)
    SourceKind(
        "httpcore",
        "otel_backpressure.pool._httpx:HttpxPoolSource",
        ("httpcore._sync.connection_pool", "ConnectionPool.__init__"),
    ),
    SourceKind(
        "httpcore",
        "otel_backpressure.pool._httpx:HttpxPoolSource",
        ("httpcore._async.connection_pool", "AsyncConnectionPool.__init__"),
    ),
    SourceKind(
        "aiohttp",
        "otel_backpressure.pool._aiohttp:AiohttpPoolSource",
        ("aiohttp.connector", "BaseConnector.__init__"),
    ),
)


#: What a caller may hand over, in an error message's words. One list, so that
#: ``instrument()``, ``pool_health()`` and the instrumentor's ``engines=``
#: cannot disagree about it (tests/unit/pool/test_kinds.py holds it to SOURCES).
TARGETS: Final = (
    "a SQLAlchemy Engine or AsyncEngine",
    "an asyncpg.Pool",
    "a psycopg_pool pool",
    "a redis-py client or pool",
    "an httpx client or transport or an httpcore pool",
    "an aiohttp ClientSession or connector",
    # the runtime part's, through the same calls (docs/runtime.md)
    "an anyio.CapacityLimiter or ThreadPoolExecutor",
)

#: What ``pool_health()`` reads besides (a pool nobody can instrument alone).
READ_ONLY_TARGETS: Final = ("a SQLAlchemy Pool",)


def targets(*, readable: bool = False) -> str:
    """``TARGETS`` as one phrase; with ``readable``, ``READ_ONLY_TARGETS`` too."""
    names = [*TARGETS, *(READ_ONLY_TARGETS if readable else ())]
    return f"{', '.join(names[:-1])}, or {names[-1]}"
