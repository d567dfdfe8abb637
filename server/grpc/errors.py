"""The one table from Turnout's errors to gRPC status codes."""

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


async def abort(context: grpc.aio.ServicerContext, error: errors.TurnoutError) -> NoReturn:
    """End the RPC with the error's status and message."""
    await context.abort(code_for(error), error.message)
    raise AssertionError("unreachable: abort raises")
