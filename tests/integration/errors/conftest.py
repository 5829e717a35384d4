"""The errors part's fixtures, shared with its integration tests."""

from __future__ import annotations

from errors_fixtures import ERRORS_ONLY, instrumented

__all__ = ["ERRORS_ONLY", "instrumented"]
