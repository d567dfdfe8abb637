"""What the models layer takes and gives: numpy tensors in, numpy tensors out, and the signature
and state of each model version."""

import enum
from dataclasses import dataclass
from typing import Literal

import numpy as np

from turnout.models.datatypes import Datatype


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as the graph declares it; -1 marks a dimension of any size."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """The public description of one model version.

    With ``max_batch_size > 0`` the first dimension of every input and output is the batch
    dimension (-1 in ``shape``), and a request may carry up to ``max_batch_size`` rows.
    """

    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int

    def input(self, name: str) -> TensorSpec | None:
        """The input called ``name``, if the model has one."""
        return next((spec for spec in self.inputs if spec.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        """The output called ``name``, if the model has one."""
        return next((spec for spec in self.outputs if spec.name == name), None)


@dataclass(frozen=True, slots=True)
class PlacedGroup:
    """Instances of a version on one device, with the providers ONNX Runtime gave them."""

    kind: Literal["cpu", "gpu"]
    device_id: int
    count: int
    providers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a model version's instances run."""

    groups: tuple[PlacedGroup, ...]

    @property
    def instance_count(self) -> int:
        """All instances of the version."""
        return sum(group.count for group in self.groups)


class VersionState(enum.Enum):
    """The life of a model version in the repository."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(slots=True)
class ModelRequest:
    """One inference for one model version: inputs by name, the outputs wanted, and the monotonic
    time (``time.monotonic()``) after which the answer is no longer wanted."""

    inputs: dict[str, np.ndarray]
    requested_outputs: tuple[str, ...] | None = None
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class RunStats:
    """How one request was executed: the rows it carried, seconds it waited in the queue,
    seconds ONNX Runtime ran, the rows of the batch it ran in, and whether the result came
    from the cache (then nothing ran; None when the version has no cache)."""

    rows: int
    queue_seconds: float
    run_seconds: float
    batch_rows: int
    cache_hit: bool | None = None


@dataclass(slots=True)
class ModelResponse:
    """The outputs of one inference, by name, and how it was executed."""

    outputs: dict[str, np.ndarray]
    stats: RunStats
