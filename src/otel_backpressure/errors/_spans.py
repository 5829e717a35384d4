"""Mapped outcomes on spans: the SDK patches and the helpers the middleware shares.

OpenTelemetry marks a span that an exception escapes in exactly two calls, made
while the exception is being handled: ``record_exception(exc)`` and
``set_status(Status(ERROR, "Type: message"))`` (``use_span``, and so
``start_as_current_span``; ``Span.__exit__``; the FastAPI instrumentation;
some ASGI instrumentation versions describe with ``str(exc)``). Wrapping those two SDK methods
is the narrowest patch: a span that ends without an exception never calls
them, so it pays nothing. For a mapped exception the wrappers replace the
default with the outcome; anything else is passed through untouched.

Example (what ``BackpressureInstrumentor`` does through ``ErrorsIntegration``)::

    import wrapt
    from otel_backpressure.errors import registry
    from otel_backpressure.errors._spans import set_status_wrapper

    wrapt.wrap_function_wrapper("opentelemetry.sdk.trace", "Span.set_status",
                                set_status_wrapper(registry))
"""

from __future__ import annotations

import contextvars
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from otel_backpressure._shared import Wrapper, python_name, type_name
from otel_backpressure.errors._metrics import count_exception
from otel_backpressure.errors._outcome import ErrorOutcome
from otel_backpressure.errors._registry import ErrorRegistry

__all__ = [
    "ERROR_TYPE",
    "apply_outcome",
    "record_exception_wrapper",
    "safe_stacktrace",
    "set_status_wrapper",
    "spans_of",
]

_logger = logging.getLogger(__name__)


# The ASGI instrumentation's default (old) semantic conventions name it so.
_HTTP_STATUS_CODE_OLD: Final = "http.status_code"
_MAX_FRAMES: Final = 64  # per exception in a safe stack trace
_MAX_CHAIN: Final = 8  # exceptions followed through __cause__/__context__
# Span ids an exception's event was already recorded on, kept on the exception
# itself so the marker dies with it.
_RECORDED_ON: Final = "_otel_backpressure_recorded_on"

# Set on a span ErrorMappingMiddleware answered for: (error.type, the Error
# status it set or None). FastAPI's telemetry marks its server span again as
# the response ends, after the middleware (error.type = the status code, Error
# without a description for 5xx); this lets the outcome stand. Kept on the span
# itself, so it goes with it and reading it costs no call.
_ANSWERED: Final = "_otel_backpressure_answered"

# True while this module sets a status itself, so its own calls are not remapped.
_applying: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "otel_backpressure_errors_applying", default=False
)


def safe_stacktrace(exc: BaseException) -> str:
    """A stack trace with frames and class names only: no messages, no source lines.

    Messages of the exception and of its causes (SQLAlchemy's carries the SQL
    and its parameters) and source lines (which may hold literals) stay out.
    """
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link: str | None = None
    while current is not None and id(current) not in seen and len(chain) < _MAX_CHAIN:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "direct cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "context"
        else:
            current = None
    lines: list[str] = []
    for position, (item, _) in enumerate(reversed(chain)):
        if position:
            # the link that led to the previous (older) exception
            older_link = chain[len(chain) - position][1]
            lines.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if older_link == "direct cause"
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        frames = traceback.StackSummary.extract(
            traceback.walk_tb(item.__traceback__), limit=_MAX_FRAMES, lookup_lines=False
        )
        if frames:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(
                f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n'
                for frame in frames
            )
        lines.append(f"{type_name(type(item))}\n")
    return "".join(lines)


def _already_recorded(exc: BaseException, span: Span) -> bool:
    recorded = getattr(exc, _RECORDED_ON, ())
    return span.get_span_context().span_id in recorded


def _mark_recorded(exc: BaseException, span: Span) -> None:
    try:
        recorded = getattr(exc, _RECORDED_ON, ())
        setattr(exc, _RECORDED_ON, (*recorded, span.get_span_context().span_id)[-16:])
    except Exception:  # an exception type that refuses attributes: accept duplicates
        _logger.debug("Cannot mark %s as recorded", type(exc).__name__)


def _record_event(
    span: Span,
    exc: BaseException,
    outcome: ErrorOutcome,
    *,
    escaped: bool,
    attributes: Mapping[str, AttributeValue] | None = None,
    timestamp: int | None = None,
) -> None:
    """Record the exception event the outcome asks for, once per span and exception."""
    if not outcome.record_exception or _already_recorded(exc, span):
        return
    _mark_recorded(exc, span)
    if outcome.expose_message:
        span.record_exception(exc, attributes, timestamp, escaped)
        return
    event: dict[str, AttributeValue] = {
        "exception.type": type_name(type(exc)),
        "exception.message": outcome.description,
        "exception.stacktrace": safe_stacktrace(exc),
        "exception.escaped": str(escaped),
    }
    if attributes:
        event.update(attributes)
    span.add_event("exception", event, timestamp)


@contextmanager
def _own_calls() -> Iterator[None]:
    token = _applying.set(True)
    try:
        yield
    finally:
        _applying.reset(token)


def apply_outcome(
    span: Span,
    exc: BaseException,
    outcome: ErrorOutcome,
    *,
    escaped: bool,
    http_status: int | None = None,
) -> None:
    """Put ``outcome`` on ``span``: ``error.type``, status, exception event.

    With ``http_status`` (a server span that answered), the HTTP rule decides
    the status instead of the outcome: 5xx is Error, anything else stays Unset.
    """
    if not span.is_recording():
        return
    is_error = outcome.is_error if http_status is None else http_status >= 500
    status = Status(StatusCode.ERROR, outcome.describe(exc)) if is_error else None
    with _own_calls():
        span.set_attribute(ERROR_TYPE, outcome.error_type)
        if status is not None:
            span.set_status(status)
        _record_event(span, exc, outcome, escaped=escaped)
    if http_status is not None:
        try:
            setattr(span, _ANSWERED, (outcome.error_type, status))
        except Exception:  # a span type that refuses attributes: FastAPI may re-mark it
            _logger.debug("Cannot remember the outcome of %r", span)


def _keep_answered(
    wrapped: Callable[..., Any],
    span: Any,
    remembered: tuple[str, Status | None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> bool:
    """Re-assert the middleware's outcome when a span it answered for is marked Error again."""
    is_error, description = _error_description(args, kwargs)
    if not is_error or description is not None:
        return False
    error_type, status = remembered
    with _own_calls():
        wrapped(status or Status(StatusCode.ERROR))
        span.set_attribute(ERROR_TYPE, error_type)
    return True


def _is_default_description(exc: BaseException, description: str) -> bool:
    """Whether ``description`` is one OpenTelemetry derives from ``exc`` by default."""
    try:
        message = str(exc)
    except Exception:
        return False
    return description in (f"{type(exc).__name__}: {message}", message)


def _error_description(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, str | None]:
    """(whether this ``set_status`` call sets Error, its description)."""
    status = args[0] if args else kwargs.get("status")
    if isinstance(status, Status):
        return status.status_code is StatusCode.ERROR, status.description
    description = args[1] if len(args) > 1 else kwargs.get("description")
    return status is StatusCode.ERROR, description


def _attributes(span: Any) -> Mapping[str, Any]:
    attributes = getattr(span, "attributes", None)
    return attributes if isinstance(attributes, Mapping) else {}


def _http_failed(span: Any, server: bool) -> bool:
    """Whether the HTTP rule makes ``span`` an Error: it answered 5xx, or (server) nothing."""
    attributes = _attributes(span)
    status = attributes.get(HTTP_RESPONSE_STATUS_CODE, attributes.get(_HTTP_STATUS_CODE_OLD))
    if isinstance(status, int) and not isinstance(status, bool):
        return status >= 500
    return server  # the server will answer 500 for the exception that escaped


def _same_name_everywhere(span: Any, exc: BaseException) -> None:
    """Rewrite an ``error.type`` another instrumentation wrote from ``exc``'s class.

    On 3.10, FastAPI's telemetry names ``asyncio.TimeoutError``
    ``asyncio.exceptions.TimeoutError``; 3.11+ says ``TimeoutError``.
    """
    written = _attributes(span).get(ERROR_TYPE)
    if written is None:  # the common case: nobody wrote one
        return
    cls = type(exc)
    name = type_name(cls)
    if written != name and written == python_name(cls):
        span.set_attribute(ERROR_TYPE, name)


def _decide(
    span: Any, exc: BaseException, registry: ErrorRegistry, is_error: bool, description: str | None
) -> tuple[ErrorOutcome, Status | None] | None:
    """For an Error status derived from ``exc``: (its outcome, the status to set, if any).

    A failure outcome sets Error with its safe description; an expected one
    sets nothing, unless the HTTP rule makes the span an Error regardless (then
    without a description: the outcome's would contradict the 5xx).

    None leaves the call alone: not an Error, a description of the
    application's own, or an unmapped exception. An ``Exception`` that reaches
    a server span this way escaped it, and is counted ``unhandled``
    (cancellation and exit are not failures of the application).
    """
    if not is_error:
        return None
    if description is not None and not _is_default_description(exc, description):
        return None  # the application's own status
    outcome = registry.lookup(exc)
    server = getattr(span, "kind", None) is SpanKind.SERVER
    if server and isinstance(exc, Exception):  # not cancellation or exit, like the middleware
        error_type = outcome.error_type if outcome is not None else type_name(type(exc))
        count_exception(exc, error_type, handled=False)
    if outcome is None:
        _same_name_everywhere(span, exc)
        return None
    if outcome.is_error:
        return outcome, Status(StatusCode.ERROR, outcome.describe(exc))
    return outcome, Status(StatusCode.ERROR) if _http_failed(span, server) else None


def spans_of(tracer_provider: object | None) -> object | None:
    """What tells the spans of ``tracer_provider`` apart; None: map every SDK span.

    An SDK span keeps its provider's span processor (no public attribute names
    the provider), so the wrappers compare that one, inline, without a call.
    Raises ``TypeError`` naming ``tracer_provider`` for a provider that is not
    the SDK's.
    """
    if tracer_provider is None:
        return None
    processor: object | None = getattr(tracer_provider, "_active_span_processor", None)
    if processor is None:
        raise TypeError(
            "tracer_provider must be an OpenTelemetry SDK TracerProvider (the errors part "
            f"maps the spans it creates), got {tracer_provider!r}"
        )
    return processor


def set_status_wrapper(registry: ErrorRegistry, processor: object | None = None) -> Wrapper:
    """Replace the Error status OpenTelemetry derives from a mapped exception.

    While a mapped exception is being handled, an Error status with a default
    description (``"Type: message"`` or ``str(exc)``) or none at all (FastAPI's
    telemetry, the ASGI instrumentation answering 5xx) becomes the outcome:
    whoever created the span, its ``error.type`` is the outcome's, and its
    status is the outcome's unless the HTTP rule makes it an Error (a span
    that answered 5xx, or a server span the exception escaped before any
    answer). Any other description is the application's own and is kept.
    Exceptions escaping a server span are counted ``unhandled``.
    """

    def set_status(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _applying.get() or (
            processor is not None and getattr(instance, "_span_processor", None) is not processor
        ):
            return wrapped(*args, **kwargs)
        exc = sys.exc_info()[1]
        if exc is None:
            remembered = getattr(instance, _ANSWERED, None)
            if remembered is None:
                return wrapped(*args, **kwargs)
            try:
                kept = _keep_answered(wrapped, instance, remembered, args, kwargs)
            except Exception:
                _logger.warning("Error mapping failed in set_status", exc_info=True)
                kept = False
            return None if kept else wrapped(*args, **kwargs)
        try:
            decision = _decide(instance, exc, registry, *_error_description(args, kwargs))
        except Exception:
            _logger.warning("Error mapping failed; OpenTelemetry's default applies", exc_info=True)
            decision = None
        if decision is None:
            return wrapped(*args, **kwargs)
        outcome, status = decision
        try:
            with _own_calls():
                if status is not None:
                    wrapped(status)
                instance.set_attribute(ERROR_TYPE, outcome.error_type)
        except Exception:
            _logger.warning("Error mapping failed in set_status", exc_info=True)
        return None

    return set_status


def record_exception_wrapper(registry: ErrorRegistry, processor: object | None = None) -> Wrapper:
    """Record a mapped exception's event as its outcome asks (see ``_record_event``).

    An unmapped exception keeps the SDK's event, with ``exception.type``
    spelled by ``type_name`` so that it reads the same on every Python.
    """

    def record_exception(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _applying.get() or (
            processor is not None and getattr(instance, "_span_processor", None) is not processor
        ):
            return wrapped(*args, **kwargs)
        try:
            bound = _bind_record_exception(*args, **kwargs)
            exc = bound["exception"]
            outcome = registry.lookup(exc) if isinstance(exc, BaseException) else None
        except Exception:
            _logger.warning("Error mapping failed; OpenTelemetry's default applies", exc_info=True)
            return wrapped(*args, **kwargs)
        if outcome is None:
            return wrapped(**_named_alike(bound))
        try:
            with _own_calls():
                _record_event(
                    instance,
                    exc,
                    outcome,
                    escaped=bool(bound["escaped"]),
                    attributes=bound["attributes"],
                    timestamp=bound["timestamp"],
                )
        except Exception:
            _logger.warning("Error mapping failed in record_exception", exc_info=True)
        return None

    return record_exception


def _named_alike(bound: dict[str, Any]) -> dict[str, Any]:
    """``bound`` with ``exception.type`` as ``type_name`` spells it, where the SDK differs."""
    exc = bound["exception"]
    if not isinstance(exc, BaseException):
        return bound
    name = type_name(type(exc))
    attributes = bound["attributes"] or {}
    if name == python_name(type(exc)) or "exception.type" in attributes:
        return bound
    return {**bound, "attributes": {**attributes, "exception.type": name}}


def _bind_record_exception(
    exception: BaseException,
    attributes: Mapping[str, AttributeValue] | None = None,
    timestamp: int | None = None,
    escaped: bool = False,
) -> dict[str, Any]:
    return {
        "exception": exception,
        "attributes": attributes,
        "timestamp": timestamp,
        "escaped": escaped,
    }
