"""The compact mapping syntax of ``OTEL_PYTHON_BACKPRESSURE_ERROR_MAPPINGS``.

Comma-separated entries ``module.Class=STATUS:HTTP[:ERROR_TYPE]``:

- ``STATUS`` is ``error`` (span status Error, exception event recorded) or
  ``unset`` (an expected outcome: status left Unset, no exception event);
- ``HTTP`` is the response status, 400 to 599;
- ``ERROR_TYPE`` is the ``error.type`` value, by default the dotted path.

Example::

    myapp.errors.NotFound=unset:404,httpx.ConnectTimeout=error:504:timeout

Parsing is strict: one bad entry rejects the whole value (the errors part logs
it once, naming the variable and the entry, and adds no mapping from it).
"""

from __future__ import annotations

from opentelemetry.trace import StatusCode

from otel_backpressure.errors._outcome import ErrorOutcome
from otel_backpressure.errors._registry import target_key

__all__ = ["SYNTAX", "parse_mappings"]

SYNTAX = "module.Class=error|unset:HTTP_STATUS[:error.type]"

_STATUSES = {"error": StatusCode.ERROR, "unset": StatusCode.UNSET}


def _parse_entry(entry: str) -> tuple[str, ErrorOutcome]:
    path, equals, spec = entry.partition("=")
    fields = [field.strip() for field in spec.split(":")]
    path = path.strip()
    if not equals or len(fields) not in (2, 3):
        raise ValueError
    status = _STATUSES.get(fields[0].lower())
    if status is None or not fields[1].isdigit():
        raise ValueError
    error_type = fields[2] if len(fields) == 3 else path
    target_key(path)  # ValueError unless a dotted identifier path
    outcome = ErrorOutcome(
        error_type=error_type,
        status_code=status,
        http_status=int(fields[1]),
        record_exception=status is StatusCode.ERROR,
        description=error_type,
    )
    return path, outcome


def parse_mappings(text: str) -> tuple[tuple[str, ErrorOutcome], ...]:
    """Parse the variable's value; raise ValueError naming the first bad entry."""
    if not text.strip():
        return ()
    mappings: list[tuple[str, ErrorOutcome]] = []
    seen: set[str] = set()
    for raw_entry in text.split(","):
        entry = raw_entry.strip()
        try:
            path, outcome = _parse_entry(entry)
        except ValueError:
            raise ValueError(f"entry {entry!r}: expected {SYNTAX}") from None
        if path in seen:
            raise ValueError(f"entry {entry!r}: {path} mapped twice, expected each once")
        seen.add(path)
        mappings.append((path, outcome))
    return tuple(mappings)
