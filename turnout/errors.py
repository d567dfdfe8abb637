"""The errors Turnout's core raises. Their messages are written for clients and name only public
things (models, versions, tensors, fields); each transport maps the types to its status codes in
one table (server/http/errors.py, server/grpc/errors.py).
"""

from collections.abc import Iterable


class TurnoutError(Exception):
    """An error whose message is safe to send to the client that caused it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(TurnoutError):
    """The request is malformed or does not fit the model."""


class UnsupportedMediaType(InvalidInput):
    """The request body is in a format Turnout does not read."""


class AlreadyRecorded(TurnoutError):
    """The thing sent once already (a reward for a request) cannot be sent again."""


class Unauthenticated(TurnoutError):
    """The admin credentials are missing or wrong."""


class PermissionDenied(TurnoutError):
    """The caller is known but may not do this (a cross-origin admin request, say)."""


class PayloadTooLarge(TurnoutError):
    """The request is larger than the configured limit."""


class ModelNotFound(TurnoutError):
    """No endpoint, model or version by that name."""


class ModelNotReady(TurnoutError):
    """The model version exists but cannot serve now (loading, failed, unloading)."""


class Unavailable(TurnoutError):
    """The server is not accepting work (starting or draining)."""


class Overloaded(TurnoutError):
    """Refused at once because the queue is full; the client may retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(TurnoutError):
    """The request's time budget ran out before it could be answered."""


class RunFailed(TurnoutError):
    """A model run that Turnout gave up on (it passed the version's hard run timeout)."""


class InternalError(TurnoutError):
    """A fault inside Turnout; the message carries only a request id to find it in the logs."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"internal error; request id {request_id}")
        self.request_id = request_id


def quoted(text: str, limit: int = 64) -> str:
    """``text`` quoted for an error message, shortened when a client sent something huge."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return repr(text)


def quoted_list(names: Iterable[str], limit: int = 8) -> str:
    """Up to ``limit`` names, quoted and comma-separated, with a count of the rest."""
    names = list(names)
    shown = ", ".join(quoted(name) for name in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


class ClientDisconnected(Exception):
    """The client went away before its request was answered; there is nobody to tell."""
