"""What the shared test repository's models must look like through either protocol: the data
the metadata and configuration tests compare against."""

from dataclasses import dataclass

import pytest

from tests.support.onnx_models import ALL_TYPES


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor as model metadata reports it (-1 for a variable dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, object]:
        """As V2 model metadata over HTTP."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def config(self, batched: bool) -> tuple[str, str, list[int]]:
        """Name, Triton ``data_type`` and ``dims`` (without the batch dimension if batched)."""
        data_type = "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"
        return self.name, data_type, list(self.shape[1:] if batched else self.shape)


@dataclass(frozen=True, slots=True)
class ModelCase:
    """A model, optionally a pinned version, and what the server must report for it."""

    model: str
    version: str  # "" asks for the endpoint, which routes to ``served``
    served: str
    versions: tuple[str, ...]
    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"{self.model}-v{self.version}" if self.version else self.model

    def path(self, suffix: str = "") -> str:
        """``/v2/models/{m}[/versions/{v}]`` followed by ``suffix``."""
        version = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{version}{suffix}"

    def metadata(self) -> dict[str, object]:
        """The V2 model metadata document."""
        return {
            "name": self.model,
            "versions": list(self.versions),
            "platform": "onnxruntime_onnx",
            "inputs": [tensor.metadata() for tensor in self.inputs],
            "outputs": [tensor.metadata() for tensor in self.outputs],
        }

    def config_inputs(self) -> list[tuple[str, str, list[int]]]:
        """The inputs of the model configuration."""
        return [tensor.config(self.max_batch_size > 0) for tensor in self.inputs]

    def config_outputs(self) -> list[tuple[str, str, list[int]]]:
        """The outputs of the model configuration."""
        return [tensor.config(self.max_batch_size > 0) for tensor in self.outputs]


def _mlp(version: str, served: str) -> ModelCase:
    return ModelCase(
        "mlp",
        version,
        served,
        ("1", "2"),
        64,
        (Tensor("INPUT0", "FP32", (-1, 64)),),
        (Tensor("OUTPUT0", "FP32", (-1, 10)), Tensor("LABEL", "INT64", (-1,))),
    )


MODELS = (
    _mlp("", "2"),
    _mlp("1", "1"),
    _mlp("2", "2"),
    ModelCase(
        "all_types",
        "",
        "1",
        ("1",),
        64,
        tuple(Tensor(f"IN_{name}", name, (-1, 3)) for name, _, _ in ALL_TYPES),
        tuple(Tensor(f"OUT_{name}", name, (-1, 3)) for name, _, _ in ALL_TYPES),
    ),
    ModelCase(
        "strings",
        "",
        "1",
        ("1",),
        64,
        (Tensor("TEXT", "BYTES", (-1,)),),
        (Tensor("ECHO", "BYTES", (-1,)),),
    ),
    ModelCase(
        "fixed", "1", "1", ("1",), 0, (Tensor("X", "FP32", (2, 3)),), (Tensor("Y", "FP32", (2, 3)),)
    ),
    ModelCase(
        "slow",
        "",
        "1",
        ("1",),
        0,
        (Tensor("ITERATIONS", "INT64", (1,)),),
        (Tensor("COUNT", "INT64", (1,)),),
    ),
)
MODEL_PARAMS = [pytest.param(case, id=case.id) for case in MODELS]
