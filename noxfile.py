"""Sessions: ``nox -s tests`` (the README's test command), lint, typecheck, benchmarks."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
# A session whose interpreter is missing must fail CI, not be skipped.
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite against the real PostgreSQL, Redis and an OTLP collector."""
    session.install("-e", ".[test]")
    session.run("python", "scripts/ensure_promtool.py")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "scripts", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "scripts", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[all]", "mypy>=1.11")
    session.run("mypy")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Side-by-side runs against the anchors; prints the ratios BENCHMARKS.md reports."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
