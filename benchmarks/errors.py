"""Error mapping: its cost on spans without an exception (nil) and on the exception path.

The span patches wrap two SDK methods, ``Span.set_status`` and
``Span.record_exception``, that a span ending without an exception never
calls; this measures that claim and the price of mapping an exception.

Method: one process, one ``TracerProvider`` (no processor: the SDK's own cost
is the smallest, so any overhead shows the most). Each case runs as a batch
of operations, alternately with the patches installed
(``BackpressureInstrumentor``, errors part only) and removed, in ABBA order
(plain, mapped, mapped, plain) for ``ROUNDS`` rounds; each ABBA block gives
one paired ratio, mapped / plain, so that drift on the shared machine
cancels, and the table reports their median and interquartile range. Cases:

- ``span, no exception``: ``with start_as_current_span(): pass``;
- ``span + set_status(UNSET)``: what the ASGI instrumentation does per response;
- ``exception, mapped Error``: a ``DatabaseError`` escapes a span; plain =
  OpenTelemetry's default (``record_exception`` + ``set_status`` with the
  message), mapped = safe event + fixed description + ``error.type``;
- ``exception, mapped expected``: a ``NotFoundError`` escapes (mapped: no event);
- ``exception, unmapped``: a ``ValueError`` escapes (both: the default);
- ``record_exception + set_status``: the two calls alone on an open span, in
  an ``except`` block, for a ``DatabaseError``.

Timing on a shared machine is noisy, so each case also reports, without any
clock, how many Python calls per operation enter ``otel_backpressure.errors``
with the patches installed (a profiler hook counts them): 0 means the case
runs none of this package's code.

Run: ``python -m benchmarks errors``
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode, Tracer

import otel_backpressure.errors
from otel_backpressure import BackpressureInstrumentor, Settings
from otel_backpressure.errors import DatabaseError, NotFoundError

SPAN_OPS = 500  # per batch, cheap cases
EXCEPTION_OPS = 100  # per batch, exception cases (tracebacks cost ~10x a span)
ROUNDS = 25
ERRORS_ONLY = Settings(pool_enabled=False, rate_limit_enabled=False)


def _span_without_exception(tracer: Tracer) -> Callable[[], None]:
    def run() -> None:
        for _ in range(SPAN_OPS):
            with tracer.start_as_current_span("op"):
                pass

    return run


def _span_with_unset_status(tracer: Tracer) -> Callable[[], None]:
    unset = Status(StatusCode.UNSET)

    def run() -> None:
        for _ in range(SPAN_OPS):
            with tracer.start_as_current_span("op") as span:
                span.set_status(unset)

    return run


def _escaping(tracer: Tracer, make: Callable[[], Exception]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(EXCEPTION_OPS):
            try:
                with tracer.start_as_current_span("op"):
                    raise make()
            except Exception:
                pass

    return run


def _record_and_set(tracer: Tracer) -> Callable[[], None]:
    def run() -> None:
        span = tracer.start_span("op")
        for _ in range(EXCEPTION_OPS):
            try:
                raise DatabaseError("SELECT secret FROM t WHERE password = 'x'")
            except DatabaseError as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()

    return run


Case = tuple[Callable[[], None], int]

_ERRORS_PART = str(Path(otel_backpressure.errors.__file__).parent)


def _calls_into_errors_part(case: Case) -> float:
    """Python calls into otel_backpressure.errors per operation: the timing-free proof."""
    run, ops = case
    calls = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.startswith(_ERRORS_PART):
            calls += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls / ops


def _time(case: Case) -> float:
    """Microseconds per operation for one batch."""
    run, ops = case
    gc.collect()
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / ops * 1e6


def main() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("benchmark")
    cases: dict[str, Case] = {
        "span, no exception": (_span_without_exception(tracer), SPAN_OPS),
        "span + set_status(UNSET)": (_span_with_unset_status(tracer), SPAN_OPS),
        "exception, mapped Error": (
            _escaping(tracer, lambda: DatabaseError("dsn secret")),
            EXCEPTION_OPS,
        ),
        "exception, mapped expected": (
            _escaping(tracer, lambda: NotFoundError("no row")),
            EXCEPTION_OPS,
        ),
        "exception, unmapped": (_escaping(tracer, lambda: ValueError("plain")), EXCEPTION_OPS),
        "record_exception + set_status": (_record_and_set(tracer), EXCEPTION_OPS),
    }
    instrumentor = BackpressureInstrumentor()
    plain: dict[str, list[float]] = {name: [] for name in cases}
    mapped: dict[str, list[float]] = {name: [] for name in cases}

    def measure_plain(case: Case) -> float:
        # The same toggling work right before the batch as for the mapped run.
        instrumentor.instrument(tracer_provider=provider, settings=ERRORS_ONLY)
        instrumentor.uninstrument()
        return _time(case)

    def measure_mapped(case: Case) -> float:
        instrumentor.instrument(tracer_provider=provider, settings=ERRORS_ONLY)
        try:
            return _time(case)
        finally:
            instrumentor.uninstrument()

    for case in cases.values():  # warm-up
        measure_plain(case)
        measure_mapped(case)
    ratios: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, case in cases.items():
            before = measure_plain(case)
            after = measure_mapped(case) + measure_mapped(case)
            before += measure_plain(case)
            plain[name].append(before / 2)
            mapped[name].append(after / 2)
            ratios[name].append(after / before)
    instrumentor.instrument(tracer_provider=provider, settings=ERRORS_ONLY)
    try:
        calls = {name: _calls_into_errors_part(case) for name, case in cases.items()}
    finally:
        instrumentor.uninstrument()
    print(
        f"{'case':<32} {'plain µs':>9} {'mapped µs':>10} {'ratio':>6} {'IQR':>11} {'calls/op':>9}"
    )
    for name in cases:
        low, _, high = statistics.quantiles(ratios[name], n=4)
        print(
            f"{name:<32} {statistics.median(plain[name]):>9.2f} "
            f"{statistics.median(mapped[name]):>10.2f} {statistics.median(ratios[name]):>6.2f} "
            f"{low:>5.2f}-{high:<5.2f} {calls[name]:>9.1f}"
        )
    provider.shutdown()


if __name__ == "__main__":
    main()
