"""The public views of a model version that both transports report: V2 model metadata and
Triton's model configuration, as plain data in Triton's JSON shape."""

from typing import Any

from turnout.errors import ModelNotReady, quoted
from turnout.models.repository import VersionEntry
from turnout.models.runner import ModelRunner
from turnout.models.types import TensorSpec

BACKEND = "onnxruntime"


def metadata_view(endpoint: str, versions: list[str], entry: VersionEntry) -> dict[str, Any]:
    """V2 model metadata: name, versions, platform and tensors (-1 for variable dimensions)."""
    signature = _runner(entry).signature
    return {
        "name": endpoint,
        "versions": versions,
        "platform": signature.platform,
        "inputs": [_tensor_metadata(spec) for spec in signature.inputs],
        "outputs": [_tensor_metadata(spec) for spec in signature.outputs],
    }


def config_view(endpoint: str, entry: VersionEntry) -> dict[str, Any]:
    """Triton's model configuration for a loaded version; dims leave out the batch dimension
    when ``max_batch_size > 0``, as Triton's do."""
    runner = _runner(entry)
    signature = runner.signature
    placement = runner.placement
    batched = signature.max_batch_size > 0
    config: dict[str, Any] = {
        "name": endpoint,
        "platform": signature.platform,
        "backend": BACKEND,
        "max_batch_size": signature.max_batch_size,
        "input": [
            {
                "name": spec.name,
                "data_type": spec.datatype.config_name,
                "format": "FORMAT_NONE",
                "dims": _dims(spec, batched),
            }
            for spec in signature.inputs
        ],
        "output": [
            {
                "name": spec.name,
                "data_type": spec.datatype.config_name,
                "dims": _dims(spec, batched),
            }
            for spec in signature.outputs
        ],
        "instance_group": [
            {
                "name": f"{endpoint}_{signature.version}_{index}",
                "kind": "KIND_GPU" if group.kind == "gpu" else "KIND_CPU",
                "count": group.count,
                **({"gpus": [group.device_id]} if group.kind == "gpu" else {}),
            }
            for index, group in enumerate(placement.groups)
        ],
        "default_model_filename": entry.spec.path.name,
        "response_cache": {"enable": runner.has_cache},
        "parameters": {"version": {"string_value": signature.version}},
    }
    policy = runner.policy
    if policy.max_batch_size > 0:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(policy.preferred_batch_sizes),
            "max_queue_delay_microseconds": round(policy.max_queue_delay_s * 1e6),
        }
    return config


def _runner(entry: VersionEntry) -> ModelRunner:
    if entry.runner is None:
        raise ModelNotReady(
            f"model {quoted(entry.spec.name)} version {entry.spec.version} is not loaded"
        )
    return entry.runner


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype.name, "shape": list(spec.shape)}


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    return list(spec.shape[1:] if batched else spec.shape)
