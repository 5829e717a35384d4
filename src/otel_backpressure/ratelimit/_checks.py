"""Eager checks for the rate limiter's numeric arguments, with errors that name them.

One rule for every argument: a value that is not a number (a str, None, a
bool) raises ``TypeError``; a number the argument does not accept (a float
where a whole number is needed, inf, nan, negative, out of range) raises
``ValueError`` naming the argument, its range and the value. Ranges are closed
and chosen so that nothing overflows or spins later: an integer nanosecond
count from seconds needs a finite float well below ``2**63`` ns, and a cleanup
interval needs a floor a loop can afford to wake up at.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_COUNT", "check_seconds", "check_whole"]

# requests (a rate, a burst, a cost): a bound only so that nothing is huge
MAX_COUNT: Final = 10**12


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _given(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} digits)"


def _show(seconds: float) -> str:
    return f"{seconds:_.0f}" if seconds >= 1 and seconds == int(seconds) else f"{seconds:g}"


def check_whole(argument: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``, or an error naming ``argument``."""
    if not _is_number(value):
        raise TypeError(f"{argument} must be a whole number, got {type(value).__name__}")
    if not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"{argument} must be a whole number from {low:_} to {high:_}, got {_given(value)}"
        )
    return value


def check_seconds(argument: str, value: object, low: float, high: float) -> float:
    """``value`` as finite seconds in ``[low, high]``, or an error naming ``argument``.

    Negative zero counts as zero: it is accepted where zero is (normalised to
    ``0.0``) and refused where it is not.
    """
    if not _is_number(value):
        raise TypeError(f"{argument} must be a number of seconds, got {type(value).__name__}")
    number: float = value  # type: ignore[assignment]
    # compared as given, not as a float: 10**400 seconds must not overflow here;
    # nan and inf fail the comparison with finite bounds
    if not low <= number <= high:
        raise ValueError(
            f"{argument} must be from {_show(low)} to {_show(high)} seconds, got {_given(value)}"
        )
    return float(number) + 0.0  # -0.0 + 0.0 is 0.0
