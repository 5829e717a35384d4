"""Shared fixtures: addresses of the real services, and telemetry captures.

Services are real: a missing PostgreSQL or Redis fails the tests that need it,
it never skips them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_backpressure import settings
from otel_backpressure.testing import FakeClock, MetricsCapture


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``sqlalchemy2`` test selected on SQLAlchemy 1.4 fails saying why (never a skip)."""
    if item.get_closest_marker("sqlalchemy2") is not None:
        import sqlalchemy

        if sqlalchemy.__version__.startswith("1."):
            pytest.fail(
                f"about a SQLAlchemy 2.0 feature, run on SQLAlchemy {sqlalchemy.__version__}: "
                'deselect it with -m "not sqlalchemy2"',
                pytrace=False,
            )


@pytest.fixture(autouse=True)
def _settings_report_afresh() -> None:
    """Each test sees bad settings values logged as a fresh process would (once)."""
    settings._reported.clear()


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A plain libpq/asyncpg DSN for the test database."""
    return os.environ.get(
        "BACKPRESSURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("BACKPRESSURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def metrics() -> Iterator[MetricsCapture]:
    capture = MetricsCapture()
    yield capture
    capture.shutdown()


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
