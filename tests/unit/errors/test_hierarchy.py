"""The exception classes: constructors, validation, pickling, public names."""

from __future__ import annotations

import math
import pickle

import pytest
from opentelemetry.trace import StatusCode

from otel_backpressure import errors
from otel_backpressure.errors import (
    BackpressureError,
    DatabaseConnectionError,
    DatabaseError,
    ErrorOutcome,
    GameEngineError,
    NotFoundError,
    PoolExhaustedError,
    RateLimitExceededError,
)


def test_database_errors_nest_as_documented() -> None:
    assert issubclass(PoolExhaustedError, DatabaseError)
    assert issubclass(DatabaseConnectionError, DatabaseError)
    assert issubclass(DatabaseError, BackpressureError)
    assert not issubclass(errors.OperationTimeoutError, TimeoutError)  # no shadowing


def test_the_seed_applications_root_name_is_the_root_itself() -> None:
    """``GameEngineError`` is an alias: ``except GameEngineError`` still catches everything."""
    assert GameEngineError is BackpressureError
    import otel_backpressure

    assert otel_backpressure.GameEngineError is otel_backpressure.BackpressureError
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception) and name != "GameEngineError":
            assert issubclass(value, GameEngineError) == issubclass(value, BackpressureError)
    with pytest.raises(GameEngineError):
        raise NotFoundError("caught under the old name")

    class LegacyError(GameEngineError):  # an application's own subclass keeps working
        pass

    assert errors.registry.lookup(LegacyError()) is BackpressureError.outcome
    assert pickle.loads(pickle.dumps(GameEngineError("m"))).args == ("m",)
    assert type(GameEngineError("m")).__name__ == "BackpressureError"


def test_a_message_defaults_to_the_safe_description() -> None:
    assert str(NotFoundError()) == "not found"
    assert str(NotFoundError("no game 7")) == "no game 7"


def test_rate_limit_error_carries_policy_and_retry_after() -> None:
    exc = RateLimitExceededError(policy="api", retry_after=2)
    assert (str(exc), exc.policy, exc.retry_after) == ("rate limit exceeded", "api", 2.0)
    assert repr(exc) == (
        "RateLimitExceededError('rate limit exceeded', policy='api', retry_after=2.0)"
    )
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), str(copy), copy.policy, copy.retry_after) == (
        RateLimitExceededError,
        "rate limit exceeded",
        "api",
        2.0,
    )


@pytest.mark.parametrize("retry_after", [-1, math.inf, math.nan, True, "2"])
def test_bad_retry_after_is_rejected_naming_it(retry_after: object) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        RateLimitExceededError(retry_after=retry_after)  # type: ignore[arg-type]


def test_rate_limit_error_carries_response_headers() -> None:
    fields = [("ratelimit", '"api";r=0;t=2')]
    exc = RateLimitExceededError(policy="api", retry_after=2, headers=fields)
    assert exc.headers == (("ratelimit", '"api";r=0;t=2'),)
    assert pickle.loads(pickle.dumps(exc)).headers == exc.headers
    assert RateLimitExceededError().headers == ()


@pytest.mark.parametrize(
    "headers", [[("x-a", "1\r\nset-cookie: a")], [("x-a",)], [("x-a", 1)], [("x-é", "1")]]
)
def test_bad_headers_are_rejected_naming_them(headers: object) -> None:
    with pytest.raises(ValueError, match="headers"):
        RateLimitExceededError(headers=headers)  # type: ignore[arg-type]


def test_bad_policy_is_rejected_naming_it() -> None:
    with pytest.raises(TypeError, match="policy"):
        RateLimitExceededError(policy=3)  # type: ignore[arg-type]


def test_classes_show_their_public_path() -> None:
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, BackpressureError):
            assert value.__module__ == "otel_backpressure.errors"
            assert pickle.loads(pickle.dumps(value("m"))).args == ("m",)


def test_a_subclass_inherits_or_overrides_its_outcome() -> None:
    class GameMissing(NotFoundError):
        pass

    class GameGone(NotFoundError):
        outcome = ErrorOutcome("game_gone", StatusCode.UNSET, 410, False, "game gone")

    assert GameMissing.outcome is NotFoundError.outcome
    assert str(GameGone()) == "game gone"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"error_type": ""}, "error_type"),
        ({"error_type": "has space"}, "error_type"),
        ({"error_type": "x", "status_code": StatusCode.OK}, "status_code"),
        ({"error_type": "x", "http_status": 302}, "http_status"),
        ({"error_type": "x", "http_status": True}, "http_status"),
        ({"error_type": "x", "description": 5}, "description"),
        ({"error_type": "x", "record_exception": "yes"}, "record_exception"),
        ({"error_type": "x", "expose_message": 1}, "expose_message"),
        ({"error_type": "x", "problem_type": 5}, "problem_type"),
    ],
)
def test_outcome_rejects_bad_values_naming_the_field(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        ErrorOutcome(**kwargs)  # type: ignore[arg-type]


def test_outcome_describes_without_the_message_unless_opted_in() -> None:
    quiet = ErrorOutcome("x", description="safe")
    loud = ErrorOutcome("x", expose_message=True)
    exc = ValueError("secret")
    assert quiet.describe(exc) == "safe"
    assert loud.describe(exc) == "ValueError: secret"
    assert ErrorOutcome("only_type").description == "only_type"
