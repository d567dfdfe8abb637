"""Creating ONNX Runtime sessions and reading a model's signature from its graph."""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from turnout.models.datatypes import datatype_of_ort_type
from turnout.models.providers import ProviderSpec
from turnout.models.types import ModelSignature, TensorSpec

log = logging.getLogger(__name__)

GraphOptimization = Literal["disabled", "basic", "extended", "all"]
_OPTIMIZATION_LEVELS: dict[GraphOptimization, ort.GraphOptimizationLevel] = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
PLATFORM = "onnxruntime_onnx"
DEFAULT_MAX_BATCH_SIZE = 64


class UnsupportedModel(ValueError):
    """The graph uses something Turnout cannot serve (for example an input of a map type)."""


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """ONNX Runtime session options a model version is loaded with.

    ``intra_op_threads = 0`` means the machine's cores shared out among the version's instances,
    so that several instances do not oversubscribe the CPU.
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization: GraphOptimization = "all"
    allow_spinning: bool = False


def default_intra_op_threads(instance_count: int) -> int:
    """The cores each of ``instance_count`` instances may use without oversubscription."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, instance_count))


def create_session(
    path: Path, settings: SessionSettings, providers: Sequence[ProviderSpec], instance_count: int
) -> ort.InferenceSession:
    """Load the model at ``path`` into a session on the given providers."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads or default_intra_op_threads(
        instance_count
    )
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = _OPTIMIZATION_LEVELS[settings.graph_optimization]
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    options.add_session_config_entry(
        "session.inter_op.allow_spinning", "1" if settings.allow_spinning else "0"
    )
    return ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=[name for name, _ in providers],
        provider_options=[opts for _, opts in providers],
    )


def read_signature(
    session: ort.InferenceSession, name: str, version: str, max_batch_size: int | None
) -> ModelSignature:
    """The signature of the session's graph.

    ``max_batch_size=None`` picks the default: ``DEFAULT_MAX_BATCH_SIZE`` when every input and
    output has a variable first dimension, else 0 (no batch dimension).
    """
    inputs = tuple(_tensor_spec(arg) for arg in session.get_inputs())
    outputs = tuple(_tensor_spec(arg) for arg in session.get_outputs())
    batchable = all(spec.shape and spec.shape[0] == -1 for spec in (*inputs, *outputs))
    if max_batch_size is None:
        max_batch_size = DEFAULT_MAX_BATCH_SIZE if batchable else 0
    elif max_batch_size > 0 and not batchable:
        raise UnsupportedModel(
            "max_batch_size > 0 needs a variable first dimension on every input and output"
        )
    return ModelSignature(name, version, PLATFORM, inputs, outputs, max_batch_size)


def _tensor_spec(arg: ort.NodeArg) -> TensorSpec:
    datatype = datatype_of_ort_type(arg.type)
    if datatype is None:
        raise UnsupportedModel(f"tensor {arg.name!r} has type {arg.type}, which is not served")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, datatype, shape)
