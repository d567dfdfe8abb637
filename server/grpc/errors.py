"""The one table from Turnout's errors to gRPC status codes."""

import math
from typing import NoReturn

import grpc

from turnout import errors

# Ordered most specific first. Overloaded maps to RESOURCE_EXHAUSTED (not UNAVAILABLE, which
# clients retry blindly) so that a full queue reads as "back off", as Triton reports it.
GRPC_STATUS: tuple[tuple[type[errors.TurnoutError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.AlreadyRecorded, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.RunFailed, grpc.StatusCode.INTERNAL),
    (errors.InternalError, grpc.StatusCode.INTERNAL),
)


def code_for(error: errors.TurnoutError) -> grpc.StatusCode:
    """The gRPC status code of an error."""
    for kind, code in GRPC_STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def trailing_metadata(error: errors.TurnoutError) -> tuple[tuple[str, str], ...]:
    """Trailers an error carries beside its status: ``retry-after`` (seconds, as HTTP's header)
    when the client should back off."""
    if isinstance(error, errors.Overloaded):
        return (("retry-after", str(max(1, math.ceil(error.retry_after_s)))),)
    return ()


async def abort(context: grpc.aio.ServicerContext, error: errors.TurnoutError) -> NoReturn:
    """End the RPC with the error's status, message and trailers."""
    await context.abort(code_for(error), error.message, trailing_metadata(error))
    raise AssertionError("unreachable: abort raises")
