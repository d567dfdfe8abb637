"""The HTTP/REST front end end to end: Triton's HTTP client and plain HTTP against a real server,
with outputs checked against ONNX Runtime run directly on the same model files."""

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

import turnout
from tests.e2e.expected import MODEL_PARAMS, ModelCase
from tests.support.e2e import (
    assert_mlp_outputs,
    edge_values,
    json_outputs,
    mlp_json_request,
    mlp_reference,
    mlp_rows,
    ordinary_values,
    run_onnx,
)
from tests.support.onnx_models import ALL_TYPES
from tests.support.rawhttp import post_json, request
from tests.support.server import TurnoutProcess

BATCH_SIZES = (1, 3, 17, 64)
TEXTS = (b"hello", "h\u00e9llo \u2713 \u4e16\u754c".encode(), b"", b"tab\tand space", b"x" * 300)


def _infer(client: Any, model: str, inputs: list[Any], **options: Any) -> Any:
    return client.infer(model, inputs, **options)


def _mlp_input(rows: np.ndarray, binary: bool = True) -> Any:
    tensor = httpclient.InferInput("INPUT0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


# --- server, health and model information ---------------------------------------------------------


def test_server_metadata(server: TurnoutProcess, http_client: Any) -> None:
    status, body = server.get("/v2")
    assert status == 200
    document = json.loads(body)
    assert document["name"] == "turnout"
    assert document["version"] == turnout.__version__
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(
        document["extensions"]
    )
    assert http_client.get_server_metadata() == document


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"], ids=["live", "ready"])
def test_health(server: TurnoutProcess, path: str) -> None:
    assert server.get(path)[0] == 200


def test_health_through_triton_client(http_client: Any) -> None:
    assert http_client.is_server_live()
    assert http_client.is_server_ready()


@pytest.mark.parametrize("case", MODEL_PARAMS)
def test_model_metadata(server: TurnoutProcess, http_client: Any, case: ModelCase) -> None:
    status, body = server.get(case.path())
    assert status == 200, body
    document = json.loads(body)
    assert document == case.metadata()
    assert http_client.get_model_metadata(case.model, case.version) == document


@pytest.mark.parametrize("case", MODEL_PARAMS)
def test_model_ready(server: TurnoutProcess, http_client: Any, case: ModelCase) -> None:
    status, body = server.get(case.path("/ready"))
    assert status == 200, body
    assert json.loads(body) == {"name": case.model, "ready": True}
    assert http_client.is_model_ready(case.model, case.version)


@pytest.mark.parametrize("case", MODEL_PARAMS)
def test_model_config(server: TurnoutProcess, http_client: Any, case: ModelCase) -> None:
    status, body = server.get(case.path("/config"))
    assert status == 200, body
    config = json.loads(body)
    assert config["name"] == case.model
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == case.max_batch_size
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == case.config_inputs()
    outputs = [(t["name"], t["data_type"], t["dims"]) for t in config["output"]]
    assert outputs == case.config_outputs()
    assert config["parameters"] == {"version": {"string_value": case.served}}
    [group] = config["instance_group"]
    assert group["kind"] in ("KIND_CPU", "KIND_GPU")
    assert group["count"] == 1
    assert http_client.get_model_config(case.model, case.version) == config


def _version_stats(server: TurnoutProcess, model: str, version: str) -> dict[str, Any]:
    status, body = server.get(f"/v2/models/{model}/versions/{version}/stats")
    assert status == 200, body
    [stats] = json.loads(body)["model_stats"]
    assert (stats["name"], stats["version"]) == (model, version)
    return dict(stats)


def test_statistics_count_requests(server: TurnoutProcess, http_client: Any) -> None:
    before = _version_stats(server, "mlp", "1")
    batches = (1, 2, 5)
    for batch in batches:
        _infer(http_client, "mlp", [_mlp_input(mlp_rows(batch))], model_version="1")
    after = _version_stats(server, "mlp", "1")
    assert after["inference_count"] - before["inference_count"] == sum(batches)
    assert after["execution_count"] - before["execution_count"] == len(batches)
    assert after["last_inference"] >= before["last_inference"]
    assert after["last_inference"] > 0
    for kind in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        grown = after["inference_stats"][kind]["count"] - before["inference_stats"][kind]["count"]
        assert grown == len(batches), kind
        assert after["inference_stats"][kind]["ns"] >= before["inference_stats"][kind]["ns"]
    assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]
    sizes = {entry["batch_size"] for entry in after["batch_stats"]}
    assert set(batches) <= sizes

    everything = http_client.get_inference_statistics()["model_stats"]
    keys = {(entry["name"], entry["version"]) for entry in everything}
    assert {("mlp", "1"), ("mlp", "2"), ("strings", "1"), ("slow", "1")} <= keys
    mlp = http_client.get_inference_statistics("mlp")["model_stats"]
    assert [entry["version"] for entry in mlp] == ["1", "2"]


# --- inference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("batch", BATCH_SIZES, ids=[f"batch{b}" for b in BATCH_SIZES])
def test_mlp_matches_onnxruntime(
    http_client: Any, repository: Path, batch: int, binary: bool
) -> None:
    rows = mlp_rows(batch, seed=batch)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("OUTPUT0", "LABEL")
    ]
    result = _infer(http_client, "mlp", [_mlp_input(rows, binary)], outputs=outputs)
    response = result.get_response()
    assert response["model_name"] == "mlp"
    assert response["model_version"] == "2"
    for output in response["outputs"]:
        assert ("data" in output) is not binary
    got = {name: result.as_numpy(name) for name in ("OUTPUT0", "LABEL")}
    assert got["OUTPUT0"].shape == (batch, 10)
    assert got["LABEL"].shape == (batch,)
    assert_mlp_outputs(got, mlp_reference(repository, "2", rows))


def test_pinned_version_differs_from_routed(http_client: Any, repository: Path) -> None:
    rows = mlp_rows(4, seed=11)
    pinned = _infer(http_client, "mlp", [_mlp_input(rows)], model_version="1")
    routed = _infer(http_client, "mlp", [_mlp_input(rows)])
    assert pinned.get_response()["model_version"] == "1"
    assert routed.get_response()["model_version"] == "2"
    one = {name: pinned.as_numpy(name) for name in ("OUTPUT0", "LABEL")}
    two = {name: routed.as_numpy(name) for name in ("OUTPUT0", "LABEL")}
    assert_mlp_outputs(one, mlp_reference(repository, "1", rows))
    assert_mlp_outputs(two, mlp_reference(repository, "2", rows))
    assert not np.allclose(one["OUTPUT0"], two["OUTPUT0"])


def test_pinned_version_over_plain_http(server: TurnoutProcess, repository: Path) -> None:
    rows = mlp_rows(2, seed=12)
    reply = post_json(server.http_url, "/v2/models/mlp/versions/1/infer", mlp_json_request(rows))
    assert reply.status == 200, reply
    document = reply.json()
    assert (document["model_name"], document["model_version"]) == ("mlp", "1")
    assert_mlp_outputs(json_outputs(document), mlp_reference(repository, "1", rows))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_requested_output_subset(http_client: Any, repository: Path, binary: bool) -> None:
    rows = mlp_rows(3, seed=13)
    result = _infer(
        http_client,
        "mlp",
        [_mlp_input(rows)],
        outputs=[httpclient.InferRequestedOutput("LABEL", binary_data=binary)],
    )
    assert [output["name"] for output in result.get_response()["outputs"]] == ["LABEL"]
    assert result.as_numpy("OUTPUT0") is None
    expected = mlp_reference(repository, "2", rows)
    np.testing.assert_array_equal(result.as_numpy("LABEL"), expected["LABEL"])


def test_outputs_mix_binary_and_json(http_client: Any, repository: Path) -> None:
    rows = mlp_rows(2, seed=14)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("LABEL", binary_data=False),
    ]
    result = _infer(http_client, "mlp", [_mlp_input(rows, binary=False)], outputs=outputs)
    by_name = {output["name"]: output for output in result.get_response()["outputs"]}
    assert by_name["OUTPUT0"]["parameters"]["binary_data_size"] == 2 * 10 * 4
    assert "data" in by_name["LABEL"]
    got = {name: result.as_numpy(name) for name in ("OUTPUT0", "LABEL")}
    assert_mlp_outputs(got, mlp_reference(repository, "2", rows))


def test_nested_json_data(server: TurnoutProcess, repository: Path) -> None:
    rows = mlp_rows(3, seed=15)
    document = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [3, 64], "data": rows.tolist()}]
    }
    reply = post_json(server.http_url, "/v2/models/mlp/infer", document)
    assert reply.status == 200, reply
    assert_mlp_outputs(json_outputs(reply.json()), mlp_reference(repository, "2", rows))


def _split_binary(reply_body: bytes, header_length: int) -> tuple[dict[str, Any], bytes]:
    return json.loads(reply_body[:header_length]), reply_body[header_length:]


def test_binary_extension_by_hand(server: TurnoutProcess, repository: Path) -> None:
    """The binary tensor data extension on the wire, without Triton's client."""
    rows = mlp_rows(2, seed=16)
    raw = rows.astype("<f4").tobytes()
    header = json.dumps(
        {
            "id": "by-hand",
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [2, 64],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": "OUTPUT0", "parameters": {"binary_data": True}},
                {"name": "LABEL"},
            ],
        }
    ).encode()
    reply = request(
        server.http_url,
        "POST",
        "/v2/models/mlp/infer",
        header + raw,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert reply.status == 200, reply
    document, blob = _split_binary(
        reply.body, int(reply.headers["inference-header-content-length"])
    )
    assert document["id"] == "by-hand"
    output0, label = document["outputs"]
    assert output0["name"] == "OUTPUT0"
    assert output0["parameters"] == {"binary_data_size": 80}
    assert len(blob) == 80
    got = {
        "OUTPUT0": np.frombuffer(blob, "<f4").reshape(output0["shape"]),
        "LABEL": np.asarray(label["data"]).reshape(label["shape"]),
    }
    assert_mlp_outputs(got, mlp_reference(repository, "2", rows))


def test_binary_data_output_parameter(server: TurnoutProcess, repository: Path) -> None:
    rows = mlp_rows(1, seed=17)
    document = mlp_json_request(rows, parameters={"binary_data_output": True})
    reply = post_json(server.http_url, "/v2/models/mlp/infer", document)
    assert reply.status == 200, reply
    assert reply.headers["content-type"] == "application/octet-stream"
    header, blob = _split_binary(reply.body, int(reply.headers["inference-header-content-length"]))
    sizes = [output["parameters"]["binary_data_size"] for output in header["outputs"]]
    assert sizes == [40, 8]
    assert len(blob) == 48
    got = {
        "OUTPUT0": np.frombuffer(blob[:40], "<f4").reshape(1, 10),
        "LABEL": np.frombuffer(blob[40:], "<i8").reshape(1),
    }
    assert_mlp_outputs(got, mlp_reference(repository, "2", rows))


def test_request_id_is_echoed(http_client: Any) -> None:
    result = _infer(http_client, "mlp", [_mlp_input(mlp_rows(1))], request_id="req-42 \u00e9")
    assert result.get_response()["id"] == "req-42 \u00e9"


def test_request_id_empty_when_none_sent(server: TurnoutProcess) -> None:
    reply = post_json(server.http_url, "/v2/models/mlp/infer", mlp_json_request(mlp_rows(1)))
    assert reply.status == 200, reply
    document = reply.json()
    assert "id" in document
    assert document["id"] == ""


@pytest.mark.parametrize("datatype", [name for name, _, _ in ALL_TYPES])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_numeric_datatype_round_trips(http_client: Any, binary: bool, datatype: str) -> None:
    """``datatype``'s extremes (the other inputs ordinary values) come back bit for bit."""
    inputs, outputs, sent = [], [], {}
    for name, _, dtype in ALL_TYPES:
        values = edge_values(dtype) if name == datatype else ordinary_values(dtype)
        tensor = httpclient.InferInput(f"IN_{name}", list(values.shape), name)
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
        outputs.append(httpclient.InferRequestedOutput(f"OUT_{name}", binary_data=binary))
        sent[name] = values
    result = _infer(http_client, "all_types", inputs, outputs=outputs)
    by_name = {output["name"]: output for output in result.get_response()["outputs"]}
    for name, values in sent.items():
        assert by_name[f"OUT_{name}"]["datatype"] == name
        assert by_name[f"OUT_{name}"]["shape"] == [2, 3]
        got = result.as_numpy(f"OUT_{name}")
        np.testing.assert_array_equal(got, values, err_msg=name, strict=True)
        assert got.tobytes() == values.tobytes(), name


def _as_bytes(element: Any) -> bytes:
    return element if isinstance(element, bytes) else str(element).encode()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_round_trip(http_client: Any, binary: bool) -> None:
    texts = np.array(TEXTS, dtype=np.object_)
    tensor = httpclient.InferInput("TEXT", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=binary)
    result = _infer(
        http_client,
        "strings",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("ECHO", binary_data=binary)],
    )
    [output] = result.get_response()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("ECHO", "BYTES", [len(TEXTS)])
    assert [_as_bytes(element) for element in result.as_numpy("ECHO")] == list(TEXTS)


def test_bytes_binary_layout_by_hand(server: TurnoutProcess) -> None:
    """BYTES elements each with a 4-byte little-endian length prefix, both ways."""
    raw = b"".join(struct.pack("<I", len(text)) + text for text in TEXTS)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "TEXT",
                    "datatype": "BYTES",
                    "shape": [len(TEXTS)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "ECHO", "parameters": {"binary_data": True}}],
        }
    ).encode()
    reply = request(
        server.http_url,
        "POST",
        "/v2/models/strings/infer",
        header + raw,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status == 200, reply
    document, blob = _split_binary(
        reply.body, int(reply.headers["inference-header-content-length"])
    )
    assert document["outputs"][0]["parameters"] == {"binary_data_size": len(raw)}
    assert blob == raw


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_request_compression(http_client: Any, repository: Path, algorithm: str) -> None:
    rows = mlp_rows(8, seed=18)
    result = _infer(http_client, "mlp", [_mlp_input(rows)], request_compression_algorithm=algorithm)
    got = {name: result.as_numpy(name) for name in ("OUTPUT0", "LABEL")}
    assert_mlp_outputs(got, mlp_reference(repository, "2", rows))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_json_request_compression(http_client: Any, repository: Path, algorithm: str) -> None:
    rows = mlp_rows(2, seed=19)
    result = _infer(
        http_client,
        "mlp",
        [_mlp_input(rows, binary=False)],
        outputs=[
            httpclient.InferRequestedOutput(n, binary_data=False) for n in ("OUTPUT0", "LABEL")
        ],
        request_compression_algorithm=algorithm,
    )
    got = {name: result.as_numpy(name) for name in ("OUTPUT0", "LABEL")}
    assert_mlp_outputs(got, mlp_reference(repository, "2", rows))


def test_timeout_parameter_allows_a_timely_request(http_client: Any, repository: Path) -> None:
    rows = mlp_rows(2, seed=20)
    # Triton's client sends the timeout in microseconds as the "timeout" request parameter.
    result = _infer(http_client, "mlp", [_mlp_input(rows)], timeout=30_000_000)
    got = {name: result.as_numpy(name) for name in ("OUTPUT0", "LABEL")}
    assert_mlp_outputs(got, mlp_reference(repository, "2", rows))


def test_routing_key_header_and_parameter(server: TurnoutProcess, repository: Path) -> None:
    rows = mlp_rows(1, seed=21)
    for headers, fields in (
        ({"x-routing-key": "user-7"}, {}),
        ({}, {"parameters": {"routing_key": "user-8"}}),
    ):
        reply = post_json(
            server.http_url, "/v2/models/mlp/infer", mlp_json_request(rows, **fields), headers
        )
        assert reply.status == 200, reply
        assert reply.json()["model_version"] == "2"
        assert_mlp_outputs(json_outputs(reply.json()), mlp_reference(repository, "2", rows))


def test_fixed_shape_model(server: TurnoutProcess, repository: Path) -> None:
    x = np.array([[1.5, -2.0, 0.25], [4.0, 8.0, -16.0]], dtype=np.float32)
    document = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}]}
    reply = post_json(server.http_url, "/v2/models/fixed/infer", document)
    assert reply.status == 200, reply
    expected = run_onnx(repository / "fixed" / "1" / "model.onnx", {"X": x})["Y"]
    np.testing.assert_array_equal(json_outputs(reply.json())["Y"], expected)
