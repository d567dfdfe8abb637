"""What the router takes from the server layer and gives back: decoded, transport-free requests
and responses."""

from dataclasses import dataclass, field

import numpy as np

from turnout.models.types import RunStats

ParameterValue = bool | int | float | str


@dataclass(slots=True)
class InferenceRequest:
    """A request to an endpoint, decoded from whichever protocol carried it.

    ``version`` pins a model version and bypasses routing. ``deadline`` is a ``time.monotonic()``
    instant after which the answer is no longer wanted.
    """

    endpoint: str
    inputs: dict[str, np.ndarray]
    request_id: str = ""
    version: str | None = None
    requested_outputs: tuple[str, ...] | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    routing_key: str | None = None
    deadline: float | None = None


@dataclass(slots=True)
class InferenceResponse:
    """The outputs of a request, the model version that produced them, how it ran, and the id
    to echo (the request's, or one the router gave it)."""

    endpoint: str
    version: str
    outputs: dict[str, np.ndarray]
    stats: RunStats
    request_id: str = ""
