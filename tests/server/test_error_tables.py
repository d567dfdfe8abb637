"""The one table per transport from Turnout's errors to status codes (server/http/errors.py and
server/grpc/errors.py), checked against the README's error table, and the one HTTP error body."""

import inspect
from typing import Any

import grpc
import orjson
import pytest

from turnout import errors
from turnout.server.grpc.errors import GRPC_STATUS, code_for
from turnout.server.http.errors import HTTP_STATUS, error_response, json_error, status_for

# The README's error table, one row per error class: (class, HTTP status, gRPC code).
EXPECTED = [
    pytest.param(errors.InvalidInput, 400, grpc.StatusCode.INVALID_ARGUMENT, id="InvalidInput"),
    # The README gives no gRPC code ("—"): gRPC has no Content-Type to refuse. Should one be
    # raised there, it is an InvalidInput and reads INVALID_ARGUMENT.
    pytest.param(
        errors.UnsupportedMediaType,
        415,
        grpc.StatusCode.INVALID_ARGUMENT,
        id="UnsupportedMediaType",
    ),
    pytest.param(
        errors.PayloadTooLarge, 413, grpc.StatusCode.RESOURCE_EXHAUSTED, id="PayloadTooLarge"
    ),
    pytest.param(errors.AlreadyRecorded, 409, grpc.StatusCode.ALREADY_EXISTS, id="AlreadyRecorded"),
    pytest.param(
        errors.Unauthenticated, 401, grpc.StatusCode.UNAUTHENTICATED, id="Unauthenticated"
    ),
    pytest.param(
        errors.PermissionDenied, 403, grpc.StatusCode.PERMISSION_DENIED, id="PermissionDenied"
    ),
    pytest.param(errors.ModelNotFound, 404, grpc.StatusCode.NOT_FOUND, id="ModelNotFound"),
    pytest.param(errors.ModelNotReady, 503, grpc.StatusCode.UNAVAILABLE, id="ModelNotReady"),
    pytest.param(errors.Unavailable, 503, grpc.StatusCode.UNAVAILABLE, id="Unavailable"),
    # Not in the README's table; as server/grpc/errors.py documents it: 503 with Retry-After, and
    # RESOURCE_EXHAUSTED so that clients back off instead of retrying blindly.
    pytest.param(errors.Overloaded, 503, grpc.StatusCode.RESOURCE_EXHAUSTED, id="Overloaded"),
    pytest.param(
        errors.DeadlineExceeded, 504, grpc.StatusCode.DEADLINE_EXCEEDED, id="DeadlineExceeded"
    ),
    pytest.param(errors.RunFailed, 500, grpc.StatusCode.INTERNAL, id="RunFailed"),
    pytest.param(errors.InternalError, 500, grpc.StatusCode.INTERNAL, id="InternalError"),
]


def _error_classes() -> set[type[errors.TurnoutError]]:
    """Every TurnoutError subclass turnout/errors.py defines."""
    return {
        value
        for _, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, errors.TurnoutError)
        and value is not errors.TurnoutError
        and value.__module__ == errors.__name__
    }


def _instance(kind: type[errors.TurnoutError]) -> errors.TurnoutError:
    if kind is errors.InternalError:
        return errors.InternalError("req-1")
    return kind(f"a {kind.__name__} happened")


def test_every_error_class_has_a_row_in_the_expected_table() -> None:
    expected = {param.values[0] for param in EXPECTED}
    assert expected == _error_classes()


@pytest.mark.parametrize(("kind", "http_status", "grpc_code"), EXPECTED)
def test_http_status_of_each_error(
    kind: type[errors.TurnoutError], http_status: int, grpc_code: Any
) -> None:
    error = _instance(kind)
    assert status_for(error) == http_status
    assert error_response(error).status_code == http_status


@pytest.mark.parametrize(("kind", "http_status", "grpc_code"), EXPECTED)
def test_grpc_code_of_each_error(
    kind: type[errors.TurnoutError], http_status: int, grpc_code: Any
) -> None:
    assert code_for(_instance(kind)) == grpc_code


@pytest.mark.parametrize(
    "table",
    [pytest.param(HTTP_STATUS, id="http"), pytest.param(GRPC_STATUS, id="grpc")],
)
def test_every_error_class_has_a_row_of_its_own_or_of_a_base(table: tuple[Any, ...]) -> None:
    """No error class reaches the catch-all default."""
    for kind in _error_classes():
        assert any(issubclass(kind, row) for row, _ in table), kind.__name__


@pytest.mark.parametrize(
    "table",
    [pytest.param(HTTP_STATUS, id="http"), pytest.param(GRPC_STATUS, id="grpc")],
)
def test_no_row_is_hidden_behind_an_earlier_more_general_one(table: tuple[Any, ...]) -> None:
    """The first row an error is an instance of wins, so specific classes must come first."""
    for index, (kind, _) in enumerate(table):
        earlier = [row.__name__ for row, _ in table[:index] if issubclass(kind, row)]
        assert earlier == [], f"{kind.__name__} is shadowed by {earlier}"


def test_an_error_of_no_known_kind_is_internal() -> None:
    error = errors.TurnoutError("something")
    assert status_for(error) == 500
    assert code_for(error) == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(("kind", "http_status", "grpc_code"), EXPECTED)
def test_http_error_body_is_exactly_the_message(
    kind: type[errors.TurnoutError], http_status: int, grpc_code: Any
) -> None:
    error = _instance(kind)
    response = error_response(error)
    assert orjson.loads(response.body) == {"error": error.message}
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("input 'x': shape [2] needs 2 elements, data has 4", id="quotes"),
        pytest.param('a "double" quote, a \\ backslash\nand a newline', id="escapes"),
        pytest.param("modèle 'ü' — 日本", id="unicode"),
        pytest.param("", id="empty"),
    ],
)
def test_http_error_body_carries_any_message_intact(message: str) -> None:
    response = error_response(errors.InvalidInput(message))
    assert orjson.loads(response.body) == {"error": message}


def test_internal_error_body_names_only_the_request_id() -> None:
    response = error_response(errors.InternalError("abc123"))
    assert response.status_code == 500
    assert orjson.loads(response.body) == {"error": "internal error; request id abc123"}


def test_json_error_is_the_same_body_for_errors_that_are_not_turnout_errors() -> None:
    response = json_error(405, "Method Not Allowed", {"Allow": "GET"})
    assert response.status_code == 405
    assert orjson.loads(response.body) == {"error": "Method Not Allowed"}
    assert response.headers["allow"] == "GET"
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("retry_after_s", "header"),
    [
        pytest.param(None, "1", id="default"),
        pytest.param(0.0, "1", id="zero-is-at-least-1"),
        pytest.param(0.2, "1", id="fraction-rounds-up-to-1"),
        pytest.param(2.5, "3", id="rounds-up"),
        pytest.param(30.0, "30", id="whole"),
    ],
)
def test_overloaded_says_when_to_retry(retry_after_s: float | None, header: str) -> None:
    error = (
        errors.Overloaded("queue full")
        if retry_after_s is None
        else errors.Overloaded("queue full", retry_after_s)
    )
    response = error_response(error)
    assert response.status_code == 503
    assert response.headers["retry-after"] == header
    assert orjson.loads(response.body) == {"error": "queue full"}


@pytest.mark.parametrize(
    ("kind", "http_status", "grpc_code"),
    [param for param in EXPECTED if param.values[0] is not errors.Overloaded],
)
def test_only_overloaded_carries_retry_after(
    kind: type[errors.TurnoutError], http_status: int, grpc_code: Any
) -> None:
    assert "retry-after" not in error_response(_instance(kind)).headers


def test_unauthenticated_asks_for_a_bearer_token() -> None:
    response = error_response(errors.Unauthenticated("the admin token is not valid"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_payload_too_large_closes_the_connection() -> None:
    """The rest of an oversized body is never read, so the connection cannot be reused."""
    response = error_response(errors.PayloadTooLarge("body over 64 bytes"))
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
