"""The gRPC front end end to end: Triton's gRPC client and Turnout's own generated stub against a
real server, with outputs checked against ONNX Runtime run directly on the same model files."""

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import turnout
from tests.e2e.expected import MODEL_PARAMS, ModelCase
from tests.support.e2e import (
    assert_mlp_outputs,
    edge_values,
    mlp_reference,
    mlp_rows,
    ordinary_values,
    typed_tensor,
)
from tests.support.e2e_models import TYPED
from tests.support.onnx_models import ALL_TYPES
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

BATCH_SIZES = (1, 3, 17, 64)
TEXTS = (b"hello", "h\u00e9llo \u2713".encode(), b"", b"x" * 300)
NUMPY_TYPES = {name: np.dtype(dtype).newbyteorder("<") for name, _, dtype in ALL_TYPES}


def _mlp_input(rows: np.ndarray) -> Any:
    tensor = grpcclient.InferInput("INPUT0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def _outputs(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: result.as_numpy(name) for name in names}


def decode_bytes(raw: bytes) -> list[bytes]:
    """BYTES elements from their length-prefixed raw form."""
    elements, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return elements


def raw_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every numeric output of a response, decoded from ``raw_output_contents``."""
    assert len(response.raw_output_contents) == len(response.outputs)
    return {
        output.name: np.frombuffer(raw, NUMPY_TYPES[output.datatype]).reshape(list(output.shape))
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


# --- server, health and model information ---------------------------------------------------------


def test_live_and_ready(grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert grpc_client.is_server_live()
    assert grpc_client.is_server_ready()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def test_server_metadata(grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    metadata = grpc_client.get_server_metadata(as_json=True)
    assert metadata["name"] == "turnout"
    assert metadata["version"] == turnout.__version__
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(
        metadata["extensions"]
    )
    ours = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert (ours.name, ours.version, list(ours.extensions)) == (
        metadata["name"],
        metadata["version"],
        metadata["extensions"],
    )


def _tensors(message: Any) -> list[tuple[str, str, list[int]]]:
    return [(tensor.name, tensor.datatype, list(tensor.shape)) for tensor in message]


@pytest.mark.parametrize("case", MODEL_PARAMS)
def test_model_metadata(
    grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub, case: ModelCase
) -> None:
    request = pb.ModelMetadataRequest(name=case.model, version=case.version)
    for metadata in (
        grpc_client.get_model_metadata(case.model, case.version),
        stub.ModelMetadata(request, timeout=10),
    ):
        assert metadata.name == case.model
        assert list(metadata.versions) == list(case.versions)
        assert metadata.platform == "onnxruntime_onnx"
        assert _tensors(metadata.inputs) == [
            (t.name, t.datatype, list(t.shape)) for t in case.inputs
        ]
        assert _tensors(metadata.outputs) == [
            (t.name, t.datatype, list(t.shape)) for t in case.outputs
        ]


@pytest.mark.parametrize("case", MODEL_PARAMS)
def test_model_ready(
    grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub, case: ModelCase
) -> None:
    assert grpc_client.is_model_ready(case.model, case.version)
    request = pb.ModelReadyRequest(name=case.model, version=case.version)
    assert stub.ModelReady(request, timeout=10).ready


def _config_tensors(tensors: Any) -> list[tuple[str, str, list[int]]]:
    names = grpcclient.model_config_pb2.DataType
    return [(tensor.name, names.Name(tensor.data_type), list(tensor.dims)) for tensor in tensors]


@pytest.mark.parametrize("case", MODEL_PARAMS)
def test_model_config(
    grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub, case: ModelCase
) -> None:
    config = grpc_client.get_model_config(case.model, case.version).config
    assert config.name == case.model
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == case.max_batch_size
    assert _config_tensors(config.input) == case.config_inputs()
    assert _config_tensors(config.output) == case.config_outputs()
    assert config.parameters["version"].string_value == case.served
    request = pb.ModelConfigRequest(name=case.model, version=case.version)
    ours = stub.ModelConfig(request, timeout=10).config
    assert ours.SerializeToString(deterministic=True) == config.SerializeToString(
        deterministic=True
    )


def _success_count(grpc_client: Any, model: str, version: str) -> tuple[int, int, int]:
    [stats] = grpc_client.get_inference_statistics(model, version).model_stats
    assert (stats.name, stats.version) == (model, version)
    return (
        stats.inference_count,
        stats.execution_count,
        stats.inference_stats.success.count,
    )


def test_statistics_count_requests(
    grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = _success_count(grpc_client, "mlp", "1")
    for batch in (2, 3):
        grpc_client.infer("mlp", [_mlp_input(mlp_rows(batch))], model_version="1")
    after = _success_count(grpc_client, "mlp", "1")
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (5, 2, 2)
    every = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10).model_stats
    assert {("mlp", "1"), ("mlp", "2"), ("all_types", "1")} <= {(s.name, s.version) for s in every}


# --- inference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCH_SIZES, ids=[f"batch{b}" for b in BATCH_SIZES])
def test_mlp_raw_matches_onnxruntime(grpc_client: Any, repository: Path, batch: int) -> None:
    rows = mlp_rows(batch, seed=100 + batch)
    result = grpc_client.infer("mlp", [_mlp_input(rows)])
    response = result.get_response()
    assert (response.model_name, response.model_version) == ("mlp", "2")
    assert len(response.raw_output_contents) == 2
    got = _outputs(result, ("OUTPUT0", "LABEL"))
    assert got["OUTPUT0"].shape == (batch, 10)
    assert_mlp_outputs(got, mlp_reference(repository, "2", rows))


@pytest.mark.parametrize("batch", BATCH_SIZES, ids=[f"batch{b}" for b in BATCH_SIZES])
def test_mlp_typed_matches_onnxruntime(
    stub: pb_grpc.GRPCInferenceServiceStub, repository: Path, batch: int
) -> None:
    rows = mlp_rows(batch, seed=200 + batch)
    request = pb.ModelInferRequest(model_name="mlp", inputs=[typed_tensor("INPUT0", "FP32", rows)])
    response = stub.ModelInfer(request, timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("mlp", "2", "")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "FP32", [batch, 10]),
        ("LABEL", "INT64", [batch]),
    ]
    assert_mlp_outputs(raw_outputs(response), mlp_reference(repository, "2", rows))


def test_pinned_version(
    grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub, repository: Path
) -> None:
    rows = mlp_rows(3, seed=300)
    pinned = grpc_client.infer("mlp", [_mlp_input(rows)], model_version="1")
    assert pinned.get_response().model_version == "1"
    assert_mlp_outputs(_outputs(pinned, ("OUTPUT0", "LABEL")), mlp_reference(repository, "1", rows))
    request = pb.ModelInferRequest(
        model_name="mlp", model_version="1", inputs=[typed_tensor("INPUT0", "FP32", rows)]
    )
    response = stub.ModelInfer(request, timeout=10)
    assert response.model_version == "1"
    assert_mlp_outputs(raw_outputs(response), mlp_reference(repository, "1", rows))
    routed = grpc_client.infer("mlp", [_mlp_input(rows)])
    assert routed.get_response().model_version == "2"
    assert not np.allclose(routed.as_numpy("OUTPUT0"), pinned.as_numpy("OUTPUT0"))


def test_requested_output_subset(grpc_client: Any, repository: Path) -> None:
    rows = mlp_rows(2, seed=301)
    result = grpc_client.infer(
        "mlp", [_mlp_input(rows)], outputs=[grpcclient.InferRequestedOutput("LABEL")]
    )
    assert [output.name for output in result.get_response().outputs] == ["LABEL"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(
        result.as_numpy("LABEL"), mlp_reference(repository, "2", rows)["LABEL"]
    )


@pytest.mark.parametrize("datatype", [name for name, _, _ in ALL_TYPES])
def test_every_datatype_raw(grpc_client: Any, datatype: str) -> None:
    """``datatype``'s extremes (the other inputs ordinary values) come back bit for bit."""
    inputs, sent = [], {}
    for name, _, dtype in ALL_TYPES:
        values = edge_values(dtype) if name == datatype else ordinary_values(dtype)
        tensor = grpcclient.InferInput(f"IN_{name}", list(values.shape), name)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
        sent[name] = values
    result = grpc_client.infer("all_types", inputs)
    datatypes = {output.name: output.datatype for output in result.get_response().outputs}
    for name, values in sent.items():
        assert datatypes[f"OUT_{name}"] == name
        got = result.as_numpy(f"OUT_{name}")
        np.testing.assert_array_equal(got, values, err_msg=name, strict=True)


@pytest.mark.parametrize("datatype", [name for name, _, _ in TYPED])
def test_every_datatype_typed(small_stub: pb_grpc.GRPCInferenceServiceStub, datatype: str) -> None:
    """Typed ``contents`` of every datatype that has a field, narrowed exactly (INT8 and INT16
    travel in 32-bit ``int_contents``, for example)."""
    sent = {
        name: edge_values(dtype) if name == datatype else ordinary_values(dtype)
        for name, _, dtype in TYPED
    }
    request = pb.ModelInferRequest(
        model_name="typed",
        inputs=[typed_tensor(f"IN_{name}", name, values) for name, values in sent.items()],
    )
    response = small_stub.ModelInfer(request, timeout=10)
    got = raw_outputs(response)
    for name, values in sent.items():
        np.testing.assert_array_equal(got[f"OUT_{name}"], values, err_msg=name)
        assert got[f"OUT_{name}"].tobytes() == values.astype(NUMPY_TYPES[name]).tobytes(), name


def test_bytes_raw(grpc_client: Any) -> None:
    tensor = grpcclient.InferInput("TEXT", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=np.object_))
    result = grpc_client.infer("strings", [tensor])
    [output] = result.get_response().outputs
    assert (output.name, output.datatype, list(output.shape)) == ("ECHO", "BYTES", [len(TEXTS)])
    assert list(result.as_numpy("ECHO")) == list(TEXTS)


def test_bytes_typed(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="TEXT", datatype="BYTES", shape=[len(TEXTS)]
    )
    tensor.contents.bytes_contents.extend(TEXTS)
    response = stub.ModelInfer(
        pb.ModelInferRequest(model_name="strings", inputs=[tensor]), timeout=10
    )
    [raw] = response.raw_output_contents
    assert decode_bytes(raw) == list(TEXTS)


def test_request_id_is_echoed(grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    result = grpc_client.infer("mlp", [_mlp_input(mlp_rows(1))], request_id="grpc-7 \u00e9")
    assert result.get_response().id == "grpc-7 \u00e9"
    request = pb.ModelInferRequest(
        model_name="mlp", id="typed-1", inputs=[typed_tensor("INPUT0", "FP32", mlp_rows(1))]
    )
    assert stub.ModelInfer(request, timeout=10).id == "typed-1"


def test_routing_key_is_accepted(
    grpc_client: Any, stub: pb_grpc.GRPCInferenceServiceStub, repository: Path
) -> None:
    rows = mlp_rows(2, seed=302)
    expected = mlp_reference(repository, "2", rows)
    by_header = grpc_client.infer("mlp", [_mlp_input(rows)], headers={"x-routing-key": "user-7"})
    assert by_header.get_response().model_version == "2"
    assert_mlp_outputs(_outputs(by_header, ("OUTPUT0", "LABEL")), expected)
    by_parameter = grpc_client.infer(
        "mlp", [_mlp_input(rows)], parameters={"routing_key": "user-8"}
    )
    assert_mlp_outputs(_outputs(by_parameter, ("OUTPUT0", "LABEL")), expected)
    request = pb.ModelInferRequest(model_name="mlp", inputs=[typed_tensor("INPUT0", "FP32", rows)])
    response = stub.ModelInfer(request, timeout=10, metadata=(("x-routing-key", "user-9"),))
    assert_mlp_outputs(raw_outputs(response), expected)


def test_timeouts_allow_a_timely_request(grpc_client: Any, repository: Path) -> None:
    rows = mlp_rows(2, seed=303)
    result = grpc_client.infer("mlp", [_mlp_input(rows)], timeout=30_000_000, client_timeout=30.0)
    assert_mlp_outputs(_outputs(result, ("OUTPUT0", "LABEL")), mlp_reference(repository, "2", rows))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_messages(grpc_client: Any, repository: Path, algorithm: str) -> None:
    rows = mlp_rows(4, seed=304)
    result = grpc_client.infer("mlp", [_mlp_input(rows)], compression_algorithm=algorithm)
    assert_mlp_outputs(_outputs(result, ("OUTPUT0", "LABEL")), mlp_reference(repository, "2", rows))


def test_fixed_shape_model(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = np.array([[1.5, -2.0, 0.25], [4.0, 8.0, -16.0]], dtype=np.float32)
    request = pb.ModelInferRequest(model_name="fixed", inputs=[typed_tensor("X", "FP32", x)])
    got = raw_outputs(stub.ModelInfer(request, timeout=10))["Y"]
    np.testing.assert_array_equal(got, x + np.arange(6, dtype=np.float32).reshape(2, 3))
