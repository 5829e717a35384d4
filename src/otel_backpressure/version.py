"""The package's version: the distribution's, and every meter's instrumentation-scope version."""

from __future__ import annotations

__version__ = "0.1.0"
