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
    (errors.AlreadyRecorded, 409),
    (errors.Unauthenticated, 401),
    (errors.PermissionDenied, 403),
    (errors.ModelNotFound, 404),
    (errors.ModelNotReady, 503),
    (errors.Unavailable, 503),
    (errors.Overloaded, 503),
    (errors.DeadlineExceeded, 504),
    (errors.RunFailed, 500),
    (errors.InternalError, 500),
)


def status_for(error: errors.TurnoutError) -> int:
    """The HTTP status of an error."""
    for kind, status in HTTP_STATUS:
        if isinstance(error, kind):
            return status
    return 500


def error_headers(error: errors.TurnoutError) -> dict[str, str]:
    """Headers an error response carries beside its body."""
    if isinstance(error, errors.Overloaded):
        return {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
    if isinstance(error, errors.Unauthenticated):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, errors.PayloadTooLarge):
        # The rest of the body is never read, so the connection cannot carry another request.
        return {"Connection": "close"}
    return {}


def error_body(message: str) -> bytes:
    """The body every HTTP error has: ``{"error": message}``."""
    return orjson.dumps({"error": message})


def error_response(error: errors.TurnoutError) -> Response:
    """A starlette response for ``error``."""
    return json_error(status_for(error), error.message, error_headers(error))


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A starlette response with the one error body."""
    return Response(
        error_body(message), status_code=status, headers=headers, media_type="application/json"
    )
