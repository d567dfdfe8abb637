"""Helpers shared by the end-to-end tests: what ONNX Runtime itself answers for a model file,
test inputs, metric scrapes and the check that a server still serves correctly."""

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tests.support.prometheus import Scrape
from tests.support.rawhttp import post_json
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb

MLP_FEATURES = 64
# The request cap of the end-to-end tests' second, small server.
SMALL_MAX_REQUEST_BYTES = 4096
# Tolerances for comparing the server's float outputs with a direct ONNX Runtime run.
RTOL = 1e-5
ATOL = 1e-7


@functools.cache
def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model at ``path`` for ``inputs``, run directly on ONNX Runtime."""
    session = _session(str(path))
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def mlp_rows(batch: int, seed: int = 0) -> np.ndarray:
    """``batch`` rows of INPUT0 for the mlp model."""
    return np.random.default_rng(seed).standard_normal((batch, MLP_FEATURES)).astype(np.float32)


def mlp_reference(repository: Path, version: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """What version ``version`` of mlp in ``repository`` answers for ``rows``."""
    return run_onnx(repository / "mlp" / version / "model.onnx", {"INPUT0": rows})


def mlp_json_request(rows: np.ndarray, **fields: Any) -> dict[str, Any]:
    """A V2 JSON inference request of mlp for ``rows``, with extra top-level ``fields``."""
    tensor = {
        "name": "INPUT0",
        "datatype": "FP32",
        "shape": list(rows.shape),
        "data": rows.reshape(-1).tolist(),
    }
    return {**fields, "inputs": [tensor]}


def assert_mlp_outputs(
    outputs: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> None:
    """The mlp's OUTPUT0 close to the reference's and its LABEL equal."""
    np.testing.assert_allclose(outputs["OUTPUT0"], expected["OUTPUT0"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(outputs["LABEL"], expected["LABEL"])


def json_outputs(document: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The outputs of a V2 JSON inference response as arrays of their shapes."""
    return {
        output["name"]: np.asarray(output["data"]).reshape(output["shape"])
        for output in document["outputs"]
    }


def scrape(server: TurnoutProcess) -> Scrape:
    """The server's ``/metrics`` now."""
    status, body = server.get("/metrics")
    assert status == 200, body
    return Scrape(body.decode())


def inflight(server: TurnoutProcess, protocol: str) -> float:
    """``turnout_inflight_requests`` for ``protocol`` now."""
    return scrape(server).value("turnout_inflight_requests", protocol=protocol)


def assert_serving(server: TurnoutProcess, repository: Path, version: str = "2") -> None:
    """The server is live and answers a good mlp request with ONNX Runtime's outputs."""
    status, body = server.get("/v2/health/live")
    assert status == 200, body
    rows = mlp_rows(2, seed=99)
    reply = post_json(server.http_url, "/v2/models/mlp/infer", mlp_json_request(rows))
    assert reply.status == 200, reply
    document = reply.json()
    assert document["model_version"] == version
    assert_mlp_outputs(json_outputs(document), mlp_reference(repository, version, rows))


def write_config(path: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` as a turnout.yaml (JSON is YAML); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    return path


def edge_values(dtype: type[np.generic]) -> np.ndarray:
    """A [2, 3] tensor of ``dtype`` holding its extremes and a few ordinary values."""
    if dtype is np.bool_:
        return np.array([[True, False, True], [False, False, True]])
    if issubclass(dtype, np.integer):
        ints = np.iinfo(dtype)
        return np.array([[ints.min, ints.max, 0], [1, ints.max - 1, 42]], dtype=dtype)
    floats = np.finfo(dtype)  # type: ignore[type-var]
    values = [[floats.min, floats.max, floats.tiny], [-0.5, 1 / 3, floats.smallest_subnormal]]
    return np.array(values, dtype=dtype)


def ordinary_values(dtype: type[np.generic]) -> np.ndarray:
    """A [2, 3] tensor of ``dtype`` holding small values every datatype represents exactly."""
    if dtype is np.bool_:
        return np.array([[False, True, False], [True, True, False]])
    return np.arange(6).reshape(2, 3).astype(dtype)


# The typed ``contents`` field of each datatype that has one (FP16 travels only raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def typed_tensor(
    name: str, datatype: str, values: np.ndarray | list[Any], shape: tuple[int, ...] | None = None
) -> pb.ModelInferRequest.InferInputTensor:
    """A gRPC input tensor carrying ``values`` in the typed ``contents`` field of ``datatype``
    (``shape`` defaults to the array's; give it to declare another)."""
    array = np.asarray(values)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=list(array.shape if shape is None else shape)
    )
    field = CONTENTS_FIELD.get(datatype, "fp32_contents")
    getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    return tensor
