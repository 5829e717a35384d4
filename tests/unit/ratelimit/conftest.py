"""The ``limits`` metering tests' fixture, shared by the unit and the Redis tests."""

from __future__ import annotations

from limits_fixtures import instrument

__all__ = ["instrument"]
