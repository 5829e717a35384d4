"""Connection-pool telemetry for SQLAlchemy engines and asyncpg pools.

``api`` (``instrument()``), ``health`` (``pool_health()``, ``PoolHealth``),
``metrics`` (the instruments and collection), ``sqlalchemy`` and ``asyncpg``
(reading and timing each kind of pool), ``naming`` (default pool names) and
``integration`` (the part as ``BackpressureInstrumentor`` sees it). The public
names are re-exported by ``otel_backpressure``::

    import otel_backpressure

    handle = otel_backpressure.instrument(engine)
    otel_backpressure.pool_health(engine)["status"]   # "healthy"
"""
