"""A one-command demo of the package: ``python -m otel_backpressure.demo``.

A small game service (Starlette over SQLAlchemy async, SQLite by default or
PostgreSQL with ``--database-url``) is played by simulated players in process.
Its pool overflows and times out, its rate limiter rejects, its errors are
mapped; the terminal shows what is exported, and ``--otlp-endpoint`` feeds a
collector so the dashboard lights up::

    python -m otel_backpressure.demo --duration 20 --players 20
    python -m otel_backpressure.demo --otlp-endpoint http://localhost:4317

Needs the ``all`` extra (aiosqlite, starlette, httpx, limits).
"""

from __future__ import annotations
