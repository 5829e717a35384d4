"""A sync-only application without greenlet: SQLAlchemy's asyncio extension must stay unimported.

With SQLAlchemy 2.1, importing ``sqlalchemy.ext.asyncio`` without greenlet
raises ImportError; the ``sqlalchemy`` extra does not bring greenlet, so pool
telemetry for a plain ``Engine`` must never import it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import sys

    class _NoGreenlet:
        def find_spec(self, name, path=None, target=None):
            if name == "greenlet" or name.startswith("greenlet."):
                raise ImportError("greenlet is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, _NoGreenlet())
    for name in [n for n in sys.modules if n == "greenlet" or n.startswith("greenlet.")]:
        del sys.modules[name]

    import sqlalchemy as sa
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import otel_backpressure

    reader = InMemoryMetricReader()
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.QueuePool, pool_size=2)
    handle = otel_backpressure.instrument(engine, meter_provider=MeterProvider([reader]))
    with engine.connect() as connection:
        connection.execute(sa.text("select 1"))
    names = {
        metric.name
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert "db.client.connection.count" in names, names
    assert otel_backpressure.pool_health(engine)["status"] == "healthy"
    assert "sqlalchemy.ext.asyncio" not in sys.modules
    handle.uninstrument()
    print("ok")
    """
)


def test_a_sync_engine_is_instrumented_without_the_asyncio_extension() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
