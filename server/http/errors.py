"""The one table from Turnout's errors to HTTP status codes, and the one error body."""

import math

import orjson
from starlette.responses import Response

from turnout import errors

# Ordered most specific first: the first class an error is an instance of gives its status.
HTTP_STATUS: tuple[tuple[type[errors.TurnoutError], int], ...] = (
    (errors.UnsupportedMediaType, 415),
    (errors.InvalidInput, 400),
    (errors.PayloadTooLarge, 413),
    (errors.ModelNotFound, 404),
    (errors.ModelNotReady, 503),
    (errors.Unavailable, 503),
    (errors.Overloaded, 503),
    (errors.DeadlineExceeded, 504),
    (errors.InternalError, 500),
)


def status_for(error: errors.TurnoutError) -> int:
    """The HTTP status of an error."""
    for kind, status in HTTP_STATUS:
        if isinstance(error, kind):
            return status
    return 500


def error_response(error: errors.TurnoutError) -> Response:
    """``{"error": message}`` with the error's status (and ``Retry-After`` when overloaded)."""
    headers = {}
    if isinstance(error, errors.Overloaded):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if isinstance(error, errors.PayloadTooLarge):
        headers["Connection"] = "close"
    return json_error(status_for(error), error.message, headers)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The error body every HTTP error uses."""
    return Response(
        orjson.dumps({"error": message}),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )
