"""``ErrorOutcome``: what an exception means to a trace, a metric and an HTTP client."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from opentelemetry.trace import StatusCode

__all__ = ["ErrorOutcome"]

# error.type is a low-cardinality identifier: a code or a dotted class path (no
# whitespace, commas or "=", which the mapping syntax of the settings uses).
_ERROR_TYPE_PATTERN: Final = re.compile(r"[^\s,=]{1,255}")


@dataclass(frozen=True, slots=True)
class ErrorOutcome:
    """How one kind of exception shows up in telemetry and in a response.

    ``status_code`` is ``ERROR`` for a failure someone should look at and
    ``UNSET`` for an expected outcome (a 404, a rejected rate limit).
    ``description`` is a fixed text that is safe to export; the exception's own
    message reaches a span only when ``expose_message`` is true, because
    messages carry SQL, parameters and DSNs.
    """

    error_type: str
    status_code: StatusCode = StatusCode.ERROR
    http_status: int = 500
    record_exception: bool = True
    description: str = ""
    expose_message: bool = False
    # RFC 9457 "type" URI for problem details; None means "about:blank".
    problem_type: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.error_type, str) or not _ERROR_TYPE_PATTERN.fullmatch(
            self.error_type
        ):
            raise ValueError(
                "error_type must be 1 to 255 characters without whitespace, commas or =, "
                f"got {self.error_type!r}"
            )
        if self.status_code not in (StatusCode.ERROR, StatusCode.UNSET):
            raise ValueError(
                "status_code must be StatusCode.ERROR or StatusCode.UNSET, "
                f"got {self.status_code!r}"
            )
        if (
            isinstance(self.http_status, bool)
            or not isinstance(self.http_status, int)
            or not 400 <= self.http_status <= 599
        ):
            raise ValueError(
                f"http_status must be an int from 400 to 599, got {self.http_status!r}"
            )
        for flag in ("record_exception", "expose_message"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if not isinstance(self.description, str):
            raise TypeError(f"description must be a str, got {type(self.description).__name__}")
        if not self.description:
            object.__setattr__(self, "description", self.error_type)
        if self.problem_type is not None and not isinstance(self.problem_type, str):
            raise TypeError(f"problem_type must be a str or None, got {self.problem_type!r}")

    @property
    def is_error(self) -> bool:
        """True when the span should be marked as failed."""
        return self.status_code is StatusCode.ERROR

    def describe(self, exc: BaseException) -> str:
        """The status description for ``exc``: the fixed text unless the class opted in."""
        if self.expose_message:
            return f"{type(exc).__name__}: {exc}"
        return self.description
