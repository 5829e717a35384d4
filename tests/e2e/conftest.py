"""Fixtures for the end-to-end tests: a real OTLP collector process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.collector import Collector


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    """A running ``rotel-agent`` with gRPC and HTTP receivers on free ports."""
    process = Collector(tmp_path)
    process.start()
    yield process
    process.stop()
