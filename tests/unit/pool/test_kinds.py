"""What instrument(), pool_health() and engines= say they take: one list, ``_kinds.TARGETS``."""

from __future__ import annotations

import logging

import pytest

import otel_backpressure
from otel_backpressure import BackpressureInstrumentor
from otel_backpressure.pool._kinds import READ_ONLY_TARGETS, SOURCES, TARGETS, targets
from otel_backpressure.testing import MetricsCapture


def test_every_pool_kind_is_in_the_list() -> None:
    # a kind added to SOURCES without a word in TARGETS would go unmentioned
    words = " ".join(TARGETS).lower()
    for line in SOURCES:
        assert line.library.replace("_", "") in words.replace("_", ""), line


def test_instrument_names_every_kind_it_takes() -> None:
    with pytest.raises(TypeError) as caught:
        otel_backpressure.instrument("sqlite://")
    assert str(caught.value) == f"target must be {targets()}, got str"
    for phrase in TARGETS:
        assert phrase in str(caught.value)
    assert READ_ONLY_TARGETS[0] not in str(caught.value)  # a bare Pool is only read


def test_pool_health_names_every_kind_it_reads() -> None:
    with pytest.raises(TypeError) as caught:
        otel_backpressure.pool_health("sqlite://")
    assert str(caught.value) == f"target must be {targets(readable=True)}, got str"
    for phrase in (*TARGETS, *READ_ONLY_TARGETS):
        assert phrase in str(caught.value)
    for phrase in ("psycopg_pool", "redis-py", "httpx", "aiohttp", "anyio.CapacityLimiter"):
        assert phrase in str(caught.value)


def test_the_instrumentor_names_the_same_kinds(
    metrics: MetricsCapture,
    instrumentor: BackpressureInstrumentor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        instrumentor.instrument(meter_provider=metrics.meter_provider, engine="sqlite://")
    assert f"engine must be {targets()}; got str, ignored" in caplog.text
