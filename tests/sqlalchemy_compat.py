"""SQLAlchemy 1.4 and 2.x in the tests.

The suite runs on both: where 1.4 lacks a means a test used (the psycopg 3
dialect), the test uses one both have. A test about a feature only 2.0 has
carries the ``sqlalchemy2`` marker, and the SQLAlchemy 1.4 compat sessions
deselect it by name (``-m "not sqlalchemy2"``); selected on 1.4 anyway, it
fails saying so (tests/conftest.py), it is never skipped.
"""

from __future__ import annotations

import pytest
import sqlalchemy
from packaging.version import Version

SQLALCHEMY_VERSION = Version(sqlalchemy.__version__).release
SQLALCHEMY_2 = SQLALCHEMY_VERSION >= (2,)

# SQLAlchemy's sync PostgreSQL driver in the tests: psycopg 3 where SQLAlchemy
# has its dialect (2.0+), psycopg2 on 1.4
SYNC_DRIVER = "postgresql+psycopg" if SQLALCHEMY_2 else "postgresql+psycopg2"

requires_sqlalchemy2 = pytest.mark.sqlalchemy2
