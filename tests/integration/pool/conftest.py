"""Fixtures the pool tests share (defined in pool_states and hold_server)."""

from __future__ import annotations

from hold_server import server  # noqa: F401 - the fixture, for this directory
from pool_states import instrumentor  # noqa: F401 - the fixture, for this directory
