"""Fixtures the pool tests share (defined in pool_states)."""

from __future__ import annotations

from pool_states import instrumentor  # noqa: F401 - the fixture, for this directory
