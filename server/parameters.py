"""Request parameters with a meaning to Turnout, read the same way whichever protocol carried
them."""

import time

from turnout.errors import InvalidInput
from turnout.router.types import ParameterValue

TIMEOUT = "timeout"
ROUTING_KEY = "routing_key"


def request_deadline(
    parameters: dict[str, ParameterValue], remaining_s: float | None
) -> float | None:
    """The monotonic deadline from the ``timeout`` parameter (microseconds, as Triton's clients
    send it; 0 means none) and the transport's own deadline, whichever comes first."""
    deadlines = []
    if remaining_s is not None:
        deadlines.append(time.monotonic() + remaining_s)
    timeout = parameters.get(TIMEOUT)
    if timeout is not None:
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidInput(
                f"parameters: {TIMEOUT!r} must be a non-negative integer (microseconds)"
            )
        if timeout:
            deadlines.append(time.monotonic() + timeout / 1e6)
    return min(deadlines) if deadlines else None


def routing_key(parameters: dict[str, ParameterValue], transport_key: str | None) -> str | None:
    """The routing key: the transport's (HTTP header, gRPC metadata) or else the parameter's."""
    if transport_key is not None:
        return transport_key
    key = parameters.get(ROUTING_KEY)
    if key is not None and not isinstance(key, str):
        raise InvalidInput(f"parameters: {ROUTING_KEY!r} must be a string")
    return key
