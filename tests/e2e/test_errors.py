"""Every error of the README's errors table, and the bad inputs of BAD_INPUTS.md rows 6-12, 14 and
36, with their exact HTTP status and gRPC code, against a real server. After each one the server
is still live and still answers a good request correctly, and no error carries internals."""

import functools
import gzip
import http.client
import json
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.e2e import (
    CONTENTS_FIELD,
    SMALL_MAX_REQUEST_BYTES,
    assert_serving,
    inflight,
    mlp_rows,
    scrape,
)
from tests.support.e2e_models import TYPED
from tests.support.onnx_models import ALL_TYPES, REPOSITORY_MODELS
from tests.support.polling import wait_for
from tests.support.prometheus import Scrape
from tests.support.rawhttp import Reply, assert_no_leak, post_json, request, send_raw
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
HUGE_NAME = "x" * 10_000
# The slow model's loop runs at very roughly 1.5 µs a step on a CPU core: this keeps the only
# instance of ``slow`` busy for a few tenths of a second.
BUSY_ITERATIONS = 250_000


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


def _mlp(data: Any = None, shape: Any = (1, 64), datatype: Any = "FP32", **extra: Any) -> bytes:
    tensor = {
        "name": "INPUT0",
        "datatype": datatype,
        "shape": list(shape),
        "data": [0.5] * 64 if data is None else data,
    }
    return _json({"inputs": [tensor], **extra})


def _all_types(**overrides: Any) -> bytes:
    """An all_types request of ordinary values with some inputs' data replaced."""
    inputs = []
    for name, _, _ in ALL_TYPES:
        data = overrides.get(name, [True] * 6 if name == "BOOL" else [1] * 6)
        inputs.append({"name": f"IN_{name}", "datatype": name, "shape": [2, 3], "data": data})
    return _json({"inputs": inputs})


def _binary(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = _json(header)
    return encoded + blob, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(encoded)),
    }


def _binary_mlp(declared: int, blob: bytes) -> tuple[bytes, dict[str, str]]:
    tensor = {
        "name": "INPUT0",
        "datatype": "FP32",
        "shape": [1, 64],
        "parameters": {"binary_data_size": declared},
    }
    return _binary({"inputs": [tensor]}, blob)


def _binary_text(blob: bytes, count: int) -> tuple[bytes, dict[str, str]]:
    tensor = {
        "name": "TEXT",
        "datatype": "BYTES",
        "shape": [count],
        "parameters": {"binary_data_size": len(blob)},
    }
    return _binary({"inputs": [tensor]}, blob)


def _prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


@dataclass(frozen=True)
class HttpCase:
    """A bad HTTP request and the status and message fragment it must get."""

    name: str
    path: str
    body: bytes | None
    status: int
    fragment: str
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    method: str = "POST"


INFER = "/v2/models/mlp/infer"
ONE_FLOAT = np.float32(0.5).tobytes()
BINARY_SHORT = _binary_mlp(252, ONE_FLOAT * 63)
BINARY_EXTRA = _binary_mlp(256, ONE_FLOAT * 75)
BINARY_PAST_END = _binary_mlp(512, ONE_FLOAT * 64)
BYTES_NOT_UTF8 = _binary_text(_prefixed(b"ok", b"\xff\xfe"), 2)
BYTES_CLAIMS_TOO_MUCH = _binary_text(struct.pack("<I", 1000) + b"abc", 1)
BYTES_TOO_FEW = _binary_text(_prefixed(b"a", b"b"), 3)

HTTP_CASES = [
    # BAD_INPUTS row 6: malformed JSON, wrong Content-Type, empty body.
    HttpCase("malformed-json", INFER, b'{"inputs": [', 400, "malformed JSON"),
    HttpCase("empty-body", INFER, b"", 400, "empty"),
    HttpCase("not-an-object", INFER, b"[1, 2, 3]", 400, "JSON object"),
    HttpCase("inputs-not-a-list", INFER, _json({"inputs": {}}), 400, "inputs must be a list"),
    HttpCase(
        "content-type-text", INFER, _mlp(), 415, "Content-Type", {"Content-Type": "text/plain"}
    ),
    HttpCase(
        "octet-stream-without-binary-header",
        INFER,
        _mlp(),
        415,
        "Content-Type",
        {"Content-Type": "application/octet-stream"},
    ),
    HttpCase(
        "content-encoding-br",
        INFER,
        _mlp(),
        415,
        "Content-Encoding",
        {"Content-Type": "application/json", "Content-Encoding": "br"},
    ),
    HttpCase(
        "gzip-garbage",
        INFER,
        b"not gzip at all",
        400,
        "gzip",
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ),
    HttpCase(
        "gzip-truncated",
        INFER,
        gzip.compress(_mlp())[:-20],
        400,
        "gzip",
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ),
    HttpCase(
        "deflate-garbage",
        INFER,
        b"\x00\x01not deflate",
        400,
        "deflate",
        {"Content-Type": "application/json", "Content-Encoding": "deflate"},
    ),
    # Row 7: element counts and raw sizes that do not match the shape.
    HttpCase("count-n-plus-2", INFER, _mlp([0.5] * 66), 400, "needs 64 elements, data has 66"),
    HttpCase("count-short", INFER, _mlp([0.5] * 10), 400, "needs 64 elements, data has 10"),
    HttpCase("ragged-data", INFER, _mlp([[0.5] * 64, [0.5]], shape=(2, 64)), 400, "ragged"),
    HttpCase(
        "raw-bytes-short", INFER, BINARY_SHORT[0], 400, "needs 256 bytes, got 252", BINARY_SHORT[1]
    ),
    HttpCase(
        "raw-bytes-extra", INFER, BINARY_EXTRA[0], 400, "declare 256 bytes but 300", BINARY_EXTRA[1]
    ),
    HttpCase(
        "raw-past-end", INFER, BINARY_PAST_END[0], 400, "runs past the end", BINARY_PAST_END[1]
    ),
    HttpCase(
        "header-length-past-body",
        INFER,
        _mlp(),
        400,
        "Inference-Header-Content-Length",
        {"Content-Type": "application/json", "Inference-Header-Content-Length": "999999"},
    ),
    HttpCase(
        "header-length-not-a-number",
        INFER,
        _mlp(),
        400,
        "Inference-Header-Content-Length",
        {"Content-Type": "application/json", "Inference-Header-Content-Length": "-5"},
    ),
    # Row 8: datatype mismatch, unknown datatype, a rank the graph cannot take.
    HttpCase(
        "datatype-mismatch", INFER, _mlp(datatype="FP64"), 400, "expected datatype FP32, got FP64"
    ),
    HttpCase("datatype-unknown", INFER, _mlp(datatype="FP128"), 400, "unknown datatype 'FP128'"),
    HttpCase("datatype-not-a-string", INFER, _mlp(datatype=7), 400, "unknown datatype"),
    HttpCase("rank-1", INFER, _mlp(shape=(64,)), 400, "expected shape [-1, 64], got [64]"),
    HttpCase(
        "rank-3", INFER, _mlp(shape=(1, 1, 64)), 400, "expected shape [-1, 64], got [1, 1, 64]"
    ),
    HttpCase("width-63", INFER, _mlp([0.5] * 63, shape=(1, 63)), 400, "expected shape [-1, 64]"),
    HttpCase("negative-dim", INFER, _mlp(shape=(-1, 64)), 400, "shape must be a list"),
    HttpCase(
        "fixed-shape-wrong",
        "/v2/models/fixed/infer",
        _json({"inputs": [{"name": "X", "datatype": "FP32", "shape": [3, 2], "data": [1] * 6}]}),
        400,
        "expected shape [2, 3], got [3, 2]",
    ),
    HttpCase(
        "data-of-wrong-kind",
        INFER,
        _mlp(["a"] * 64),
        400,
        "FP32 data must be numbers",
    ),
    HttpCase(
        "int-data-is-float",
        "/v2/models/all_types/infer",
        _all_types(INT32=[1.5] * 6),
        400,
        "INT32 data must be integers",
    ),
    HttpCase(
        "bool-data-is-int",
        "/v2/models/all_types/infer",
        _all_types(BOOL=[1] * 6),
        400,
        "BOOL data must be booleans",
    ),
    # Row 9: missing, unknown and duplicate inputs.
    HttpCase("no-inputs", INFER, _json({"inputs": []}), 400, "missing input 'INPUT0'"),
    HttpCase(
        "missing-inputs",
        "/v2/models/all_types/infer",
        _json(
            {
                "inputs": [
                    {"name": "IN_BOOL", "datatype": "BOOL", "shape": [1, 3], "data": [True] * 3}
                ]
            }
        ),
        400,
        "missing input 'IN_UINT8', 'IN_UINT16'",
    ),
    HttpCase(
        "unknown-input",
        INFER,
        _json(
            {
                "inputs": [
                    {"name": "INPUT9", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
                ]
            }
        ),
        400,
        "unknown input 'INPUT9'",
    ),
    HttpCase(
        "duplicate-input",
        INFER,
        _json({"inputs": [json.loads(_mlp())["inputs"][0]] * 2}),
        400,
        "duplicate input 'INPUT0'",
    ),
    HttpCase(
        "unknown-output",
        INFER,
        _mlp(outputs=[{"name": "OUTPUT9"}]),
        400,
        "unknown output 'OUTPUT9'",
    ),
    HttpCase(
        "duplicate-output",
        INFER,
        _mlp(outputs=[{"name": "LABEL"}, {"name": "LABEL"}]),
        400,
        "duplicate output 'LABEL'",
    ),
    # Row 10: BYTES element counts and bad elements.
    HttpCase(
        "bytes-count",
        "/v2/models/strings/infer",
        _json(
            {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [3], "data": ["a", "b"]}]}
        ),
        400,
        "needs 3 elements, data has 2",
    ),
    HttpCase(
        "bytes-not-strings",
        "/v2/models/strings/infer",
        _json({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": [1, 2]}]}),
        400,
        "BYTES data must be strings",
    ),
    HttpCase(
        "bytes-raw-too-few",
        "/v2/models/strings/infer",
        BYTES_TOO_FEW[0],
        400,
        "needs 3 BYTES elements",
        BYTES_TOO_FEW[1],
    ),
    HttpCase(
        "bytes-raw-claims-too-much",
        "/v2/models/strings/infer",
        BYTES_CLAIMS_TOO_MUCH[0],
        400,
        "claims 1000 bytes",
        BYTES_CLAIMS_TOO_MUCH[1],
    ),
    HttpCase(
        "bytes-not-utf8",
        "/v2/models/strings/infer",
        BYTES_NOT_UTF8[0],
        400,
        "UTF-8",
        BYTES_NOT_UTF8[1],
    ),
    # Row 11: batch sizes outside 1..max_batch_size.
    HttpCase("batch-65", INFER, _mlp([0.5] * 65 * 64, shape=(65, 64)), 400, "outside 1..64"),
    HttpCase("batch-0", INFER, _mlp([], shape=(0, 64)), 400, "outside 1..64"),
    # Values out of the datatype's range.
    HttpCase(
        "int8-300",
        "/v2/models/all_types/infer",
        _all_types(INT8=[300] * 6),
        400,
        "outside the range of INT8",
    ),
    HttpCase(
        "uint8-negative",
        "/v2/models/all_types/infer",
        _all_types(UINT8=[-1] * 6),
        400,
        "outside the range of UINT8",
    ),
    HttpCase(
        "int32-2-31",
        "/v2/models/all_types/infer",
        _all_types(INT32=[2**31] * 6),
        400,
        "outside the range of INT32",
    ),
    # Other fields of the request.
    HttpCase("id-not-a-string", INFER, _mlp(id=42), 400, "id must be a string"),
    HttpCase("timeout-negative", INFER, _mlp(parameters={"timeout": -1}), 400, "timeout"),
    HttpCase("timeout-not-a-number", INFER, _mlp(parameters={"timeout": "soon"}), 400, "timeout"),
    HttpCase("parameters-not-an-object", INFER, _mlp(parameters=[1]), 400, "parameters"),
    HttpCase(
        "classification",
        INFER,
        _mlp(outputs=[{"name": "LABEL", "parameters": {"classification": 2}}]),
        400,
        "classification",
    ),
    # Row 12: unknown model or version.
    HttpCase("unknown-model", "/v2/models/nope/infer", _mlp(), 404, "unknown model 'nope'"),
    HttpCase("unknown-version", "/v2/models/mlp/versions/9/infer", _mlp(), 404, "no version '9'"),
    HttpCase(
        "version-not-a-number", "/v2/models/mlp/versions/one/infer", _mlp(), 404, "no version 'one'"
    ),
    HttpCase(
        "metadata-unknown-model", "/v2/models/nope", None, 404, "unknown model 'nope'", {}, "GET"
    ),
    HttpCase(
        "metadata-unknown-version",
        "/v2/models/mlp/versions/3",
        None,
        404,
        "no version '3'",
        {},
        "GET",
    ),
    HttpCase("ready-unknown-model", "/v2/models/nope/ready", None, 404, "unknown model", {}, "GET"),
    HttpCase(
        "ready-unknown-version",
        "/v2/models/mlp/versions/3/ready",
        None,
        404,
        "no version",
        {},
        "GET",
    ),
    HttpCase(
        "config-unknown-model", "/v2/models/nope/config", None, 404, "unknown model", {}, "GET"
    ),
    HttpCase("stats-unknown-model", "/v2/models/nope/stats", None, 404, "unknown model", {}, "GET"),
    HttpCase(
        "stats-unknown-version",
        "/v2/models/mlp/versions/3/stats",
        None,
        404,
        "no version",
        {},
        "GET",
    ),
    # Row 36: huge or odd input on an error path names only public fields, shortened.
    HttpCase(
        "huge-input-name",
        INFER,
        _json(
            {
                "inputs": [
                    {"name": HUGE_NAME, "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
                ]
            }
        ),
        400,
        "unknown input 'xxxx",
    ),
    HttpCase(
        "huge-model-name", f"/v2/models/{'m' * 4000}/infer", _mlp(), 404, "unknown model 'mmmm"
    ),
    HttpCase("huge-datatype", INFER, _mlp(datatype="Q" * 5000), 400, "unknown datatype 'QQQ"),
    HttpCase(
        "odd-input-name",
        INFER,
        _json(
            {
                "inputs": [
                    {
                        "name": "IN'PUT\"\u0000\u202e\n",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "data": [0.5] * 64,
                    }
                ]
            }
        ),
        400,
        "unknown input",
    ),
    # Methods and routes.
    HttpCase("get-infer", INFER, None, 405, "Method Not Allowed", {}, "GET"),
    HttpCase("put-live", "/v2/health/live", b"{}", 405, "Method Not Allowed", {}, "PUT"),
    HttpCase("delete-model", "/v2/models/mlp", None, 405, "Method Not Allowed", {}, "DELETE"),
    HttpCase("post-metrics", "/metrics", b"", 405, "Method Not Allowed", {}, "POST"),
    HttpCase("unknown-route", "/v2/nothing", None, 404, "Not Found", {}, "GET"),
    HttpCase("unknown-action", "/v2/models/mlp/predict", _mlp(), 404, "Not Found"),
    HttpCase("root", "/", None, 404, "Not Found", {}, "GET"),
    HttpCase("v1-route", "/v1/models/mlp:predict", _mlp(), 404, "Not Found"),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in HTTP_CASES])
def test_http_error(server: TurnoutProcess, repository: Path, case: HttpCase) -> None:
    reply = request(server.http_url, case.method, case.path, case.body, case.headers)
    assert reply.status == case.status, reply
    message = reply.error()
    assert case.fragment in message, message
    assert len(message) < 1000, message
    assert_serving(server, repository)


ROUTES = (
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/stats",
    "/v2/models/mlp",
    "/v2/models/mlp/versions/1",
    "/v2/models/mlp/ready",
    "/v2/models/mlp/config",
    "/v2/models/mlp/versions/1/stats",
    "/v2/models/mlp/infer",
    "/v2/models/mlp/versions/1/infer",
    "/v2/models/nope/infer",
    "/metrics",
    "/v2/models/mlp/versions/1/infer/extra",
    "/%00/../v2",
)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.mark.parametrize("path", ROUTES)
def test_every_method_on_every_route(server: TurnoutProcess, repository: Path, path: str) -> None:
    """BAD_INPUTS row 4: any method on any route gets an answer below 500, and every error
    answer has the one error body."""
    for method in METHODS:
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        reply = request(server.http_url, method, path, body, {})
        assert reply.status < 500, (method, reply)
        if reply.status >= 400 and method != "HEAD":
            reply.error()
    assert_serving(server, repository)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="garbage-line"),
        pytest.param(b"GET /v2 HTTP/9.9\r\n\r\n", id="unknown-version"),
        pytest.param(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: x\r\n\r\n", id="bad-length"
        ),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-hello"),
    ],
)
def test_garbage_request_lines(server: TurnoutProcess, repository: Path, data: bytes) -> None:
    """Bytes that are not HTTP get a 4xx, never a 5xx, and the server carries on."""
    try:
        reply = send_raw(server.http_url, data)
    except (ConnectionError, http.client.HTTPException):
        pass  # closing the connection is an answer too
    else:
        assert 400 <= reply.status < 500, reply
    assert_serving(server, repository)


def test_huge_names_are_shortened_in_messages(server: TurnoutProcess) -> None:
    tensor = {"name": HUGE_NAME, "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
    message = post_json(server.http_url, INFER, {"inputs": [tensor]}).error()
    assert HUGE_NAME not in message
    assert len(message) < 300, message


# --- gRPC -----------------------------------------------------------------------------------------


def _tensor(
    name: str = "INPUT0",
    datatype: str = "FP32",
    shape: tuple[int, ...] = (1, 64),
    **contents: Any,
) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    if not contents and datatype == "FP32":
        contents = {"fp32_contents": [0.5] * int(np.prod(shape))}
    for field_name, values in contents.items():
        getattr(tensor.contents, field_name).extend(values)
    return tensor


def _typed_all(
    **overrides: pb.ModelInferRequest.InferInputTensor,
) -> list[pb.ModelInferRequest.InferInputTensor]:
    """Typed inputs of the small server's ``typed`` model, some replaced."""
    tensors = []
    for name, _, _ in TYPED:
        values = [True] * 6 if name == "BOOL" else [1] * 6
        default = _tensor(f"IN_{name}", name, (2, 3), **{CONTENTS_FIELD[name]: values})
        tensors.append(overrides.get(name, default))
    return tensors


@dataclass(frozen=True)
class GrpcCase:
    """A bad ModelInfer request and the status code and message fragment it must get."""

    name: str
    request: pb.ModelInferRequest
    code: grpc.StatusCode
    fragment: str


RAW_FLOATS = ONE_FLOAT * 64

GRPC_CASES = [
    GrpcCase(
        "unknown-model",
        pb.ModelInferRequest(model_name="nope", inputs=[_tensor()]),
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'nope'",
    ),
    GrpcCase(
        "unknown-version",
        pb.ModelInferRequest(model_name="mlp", model_version="9", inputs=[_tensor()]),
        grpc.StatusCode.NOT_FOUND,
        "no version '9'",
    ),
    GrpcCase(
        "no-inputs",
        pb.ModelInferRequest(model_name="mlp"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "missing input 'INPUT0'",
    ),
    GrpcCase(
        "unknown-input",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor("INPUT9")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown input 'INPUT9'",
    ),
    GrpcCase(
        "duplicate-input",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor(), _tensor()]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate input 'INPUT0'",
    ),
    GrpcCase(
        "datatype-mismatch",
        pb.ModelInferRequest(
            model_name="mlp", inputs=[_tensor(datatype="FP64", fp64_contents=[0.5] * 64)]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected datatype FP32, got FP64",
    ),
    GrpcCase(
        "datatype-unknown",
        pb.ModelInferRequest(
            model_name="mlp", inputs=[_tensor(datatype="FP128", fp32_contents=[0.5] * 64)]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown datatype 'FP128'",
    ),
    GrpcCase(
        "rank-1",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor(shape=(64,))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected shape [-1, 64], got [64]",
    ),
    GrpcCase(
        "negative-dim",
        pb.ModelInferRequest(
            model_name="mlp", inputs=[_tensor(shape=(-1, 64), fp32_contents=[0.5] * 64)]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape must be a list",
    ),
    GrpcCase(
        "count-n-plus-2",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor(fp32_contents=[0.5] * 66)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 64 elements, contents.fp32_contents has 66",
    ),
    GrpcCase(
        "wrong-contents-field",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor(int_contents=[1] * 64)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "goes in contents.fp32_contents",
    ),
    GrpcCase(
        "raw-bytes-short",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, 64])
            ],
            raw_input_contents=[RAW_FLOATS[:-4]],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 256 bytes, got 252",
    ),
    GrpcCase(
        "raw-entries-mismatch",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, 64])
            ],
            raw_input_contents=[RAW_FLOATS, RAW_FLOATS],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents has 2 entries for 1 inputs",
    ),
    GrpcCase(
        "raw-and-typed",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor()], raw_input_contents=[RAW_FLOATS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not both",
    ),
    GrpcCase(
        "fp16-typed",
        pb.ModelInferRequest(
            model_name="all_types",
            inputs=[_tensor("IN_FP16", "FP16", (1, 3), fp32_contents=[0.5] * 3)],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FP16 data must be sent in raw_input_contents",
    ),
    GrpcCase(
        "batch-65",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor(shape=(65, 64))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside 1..64",
    ),
    GrpcCase(
        "batch-0",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor(shape=(0, 64), fp32_contents=[])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside 1..64",
    ),
    GrpcCase(
        "bytes-count",
        pb.ModelInferRequest(
            model_name="strings",
            inputs=[_tensor("TEXT", "BYTES", (3,), bytes_contents=[b"a", b"b"])],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 3 elements",
    ),
    GrpcCase(
        "bytes-not-utf8",
        pb.ModelInferRequest(
            model_name="strings",
            inputs=[_tensor("TEXT", "BYTES", (2,), bytes_contents=[b"ok", b"\xff\xfe"])],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UTF-8",
    ),
    GrpcCase(
        "bytes-raw-claims-too-much",
        pb.ModelInferRequest(
            model_name="strings",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1])
            ],
            raw_input_contents=[struct.pack("<I", 1000) + b"abc"],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "claims 1000 bytes",
    ),
    GrpcCase(
        "unknown-output",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_tensor()],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="OUTPUT9")],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown output 'OUTPUT9'",
    ),
    GrpcCase(
        "huge-input-name",
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor(HUGE_NAME)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown input 'xxxx",
    ),
    GrpcCase(
        "huge-model-name",
        pb.ModelInferRequest(model_name="m" * 4000, inputs=[_tensor()]),
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'mmmm",
    ),
]

# Out-of-range typed integers, on the small server's ``typed`` model (all_types needs an FP16
# input, which only travels raw, and raw and typed inputs cannot be mixed).
TYPED_RANGE_CASES = [
    GrpcCase(
        "int8-300",
        pb.ModelInferRequest(
            model_name="typed",
            inputs=_typed_all(INT8=_tensor("IN_INT8", "INT8", (2, 3), int_contents=[300] * 6)),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the range of INT8",
    ),
    GrpcCase(
        "int16-negative-40000",
        pb.ModelInferRequest(
            model_name="typed",
            inputs=_typed_all(
                INT16=_tensor("IN_INT16", "INT16", (2, 3), int_contents=[-40000] * 6)
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the range of INT16",
    ),
    GrpcCase(
        "uint8-256",
        pb.ModelInferRequest(
            model_name="typed",
            inputs=_typed_all(UINT8=_tensor("IN_UINT8", "UINT8", (2, 3), uint_contents=[256] * 6)),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the range of UINT8",
    ),
]


def _grpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _check_grpc_error(error: grpc.RpcError, code: grpc.StatusCode, fragment: str) -> None:
    assert error.code() == code, (error.code(), error.details())
    details = error.details()
    assert fragment in details, details
    assert len(details) < 1000, details
    assert_no_leak(details)


def _assert_grpc_serving(stub: pb_grpc.GRPCInferenceServiceStub, version: str = "2") -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    response = stub.ModelInfer(
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor()]), timeout=10
    )
    assert response.model_version == version
    assert len(response.raw_output_contents) == 2


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in GRPC_CASES])
def test_grpc_error(
    server: TurnoutProcess, repository: Path, stub: pb_grpc.GRPCInferenceServiceStub, case: GrpcCase
) -> None:
    error = _grpc_error(lambda: stub.ModelInfer(case.request, timeout=10))
    _check_grpc_error(error, case.code, case.fragment)
    _assert_grpc_serving(stub)
    assert_serving(server, repository)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in TYPED_RANGE_CASES])
def test_grpc_typed_range_error(
    small_stub: pb_grpc.GRPCInferenceServiceStub, case: GrpcCase
) -> None:
    error = _grpc_error(lambda: small_stub.ModelInfer(case.request, timeout=10))
    _check_grpc_error(error, case.code, case.fragment)
    _assert_grpc_serving(small_stub, version="1")


@pytest.mark.parametrize(
    ("call", "code", "fragment"),
    [
        pytest.param(
            lambda s: s.ModelMetadata(pb.ModelMetadataRequest(name="nope")),
            grpc.StatusCode.NOT_FOUND,
            "unknown model",
            id="metadata-model",
        ),
        pytest.param(
            lambda s: s.ModelMetadata(pb.ModelMetadataRequest(name="mlp", version="3")),
            grpc.StatusCode.NOT_FOUND,
            "no version '3'",
            id="metadata-version",
        ),
        pytest.param(
            lambda s: s.ModelReady(pb.ModelReadyRequest(name="nope")),
            grpc.StatusCode.NOT_FOUND,
            "unknown model",
            id="ready-model",
        ),
        pytest.param(
            lambda s: s.ModelReady(pb.ModelReadyRequest(name="mlp", version="3")),
            grpc.StatusCode.NOT_FOUND,
            "no version",
            id="ready-version",
        ),
        pytest.param(
            lambda s: s.ModelConfig(pb.ModelConfigRequest(name="nope")),
            grpc.StatusCode.NOT_FOUND,
            "unknown model",
            id="config-model",
        ),
        pytest.param(
            lambda s: s.ModelStatistics(pb.ModelStatisticsRequest(name="nope")),
            grpc.StatusCode.NOT_FOUND,
            "unknown model",
            id="stats-model",
        ),
        pytest.param(
            lambda s: s.ModelStatistics(pb.ModelStatisticsRequest(name="mlp", version="3")),
            grpc.StatusCode.NOT_FOUND,
            "no version",
            id="stats-version",
        ),
    ],
)
def test_grpc_model_information_errors(
    stub: pb_grpc.GRPCInferenceServiceStub,
    call: Callable[[pb_grpc.GRPCInferenceServiceStub], Any],
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    error = _grpc_error(lambda: call(stub))
    _check_grpc_error(error, code, fragment)
    _assert_grpc_serving(stub)


def test_triton_grpc_client_sees_not_found(grpc_client: Any) -> None:
    tensor = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
    tensor.set_data_from_numpy(mlp_rows(1))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer("nope", [tensor])
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in caught.value.message()


# --- body size limits -----------------------------------------------------------------------------


def _over_default_cap_head(server: TurnoutProcess) -> bytes:
    """The head of a request whose Content-Length claims more than 64 MiB (no body follows)."""
    return (
        f"POST {INFER} HTTP/1.1\r\nHost: {server.http_url}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {DEFAULT_MAX_REQUEST_BYTES + 1}\r\n\r\n"
    ).encode()


def test_declared_length_over_the_default_cap(server: TurnoutProcess, repository: Path) -> None:
    """An honest Content-Length over 64 MiB is refused before a byte of the body is sent."""
    reply = send_raw(server.http_url, _over_default_cap_head(server))
    assert reply.status == 413, reply
    assert str(DEFAULT_MAX_REQUEST_BYTES) in reply.error()
    assert_serving(server, repository)


def _chunked_head(small_server: TurnoutProcess) -> bytes:
    return (
        f"POST {INFER} HTTP/1.1\r\nHost: {small_server.http_url}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_chunked_body_past_the_cap(small_server: TurnoutProcess, repository: Path) -> None:
    """A body with no length is counted as it streams: 413 once it passes the cap, without
    waiting for the end of the body (the final chunk is never sent)."""
    chunks = [_chunk(b" " * 1024) for _ in range(SMALL_MAX_REQUEST_BYTES // 1024 + 2)]
    reply = send_raw(small_server.http_url, _chunked_head(small_server) + b"".join(chunks))
    assert reply.status == 413, reply
    assert str(SMALL_MAX_REQUEST_BYTES) in reply.error()
    assert_serving(small_server, repository, version="1")


def test_chunked_body_under_the_cap_is_served(
    small_server: TurnoutProcess, repository: Path
) -> None:
    body = _mlp()
    data = _chunked_head(small_server) + _chunk(body[:100]) + _chunk(body[100:]) + b"0\r\n\r\n"
    reply = send_raw(small_server.http_url, data)
    assert reply.status == 200, reply
    assert reply.json()["model_version"] == "1"


_BOMB = _mlp([0.0] * 64) + b" " * (SMALL_MAX_REQUEST_BYTES * 8)
_HUGE_STRING = {"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["s" * 8000]}
OVER_THE_CAP = [
    HttpCase("content-length", INFER, b" " * (SMALL_MAX_REQUEST_BYTES + 1), 413, "request body"),
    HttpCase(
        "gzip-decompressed",
        INFER,
        gzip.compress(_BOMB),
        413,
        "decompressed",
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ),
    HttpCase(
        "deflate-decompressed",
        INFER,
        zlib.compress(_BOMB),
        413,
        "decompressed",
        {"Content-Type": "application/json", "Content-Encoding": "deflate"},
    ),
    HttpCase(
        "one-huge-string",
        "/v2/models/strings/infer",
        _json({"inputs": [_HUGE_STRING]}),
        413,
        "request body",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in OVER_THE_CAP])
def test_body_over_the_small_cap(
    small_server: TurnoutProcess, repository: Path, case: HttpCase
) -> None:
    """Bodies (or what they decompress to) over a 4 KiB cap: 413 naming the limit."""
    reply = request(small_server.http_url, case.method, case.path, case.body, case.headers)
    assert reply.status == case.status, reply
    message = reply.error()
    assert case.fragment in message, message
    assert str(SMALL_MAX_REQUEST_BYTES) in message
    assert_serving(small_server, repository, version="1")


def test_grpc_message_over_the_cap(
    small_server: TurnoutProcess, small_stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    rows = mlp_rows(32)
    request_message = pb.ModelInferRequest(
        model_name="mlp",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[32, 64])
        ],
        raw_input_contents=[rows.tobytes()],
    )
    assert request_message.ByteSize() > SMALL_MAX_REQUEST_BYTES
    error = _grpc_error(lambda: small_stub.ModelInfer(request_message, timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    _assert_grpc_serving(small_stub, version="1")


# --- ONNX Runtime refusing an input at run time (row 14) ------------------------------------------


def _gather_request(index: int) -> bytes:
    return _json(
        {"inputs": [{"name": "INDEX", "datatype": "INT64", "shape": [1], "data": [index]}]}
    )


def _add_pair_request(a: int, b: int) -> bytes:
    return _json(
        {
            "inputs": [
                {"name": "A", "datatype": "FP32", "shape": [1, a], "data": [1.0] * a},
                {"name": "B", "datatype": "FP32", "shape": [1, b], "data": [2.0] * b},
            ]
        }
    )


@pytest.mark.parametrize(
    ("model", "body"),
    [
        pytest.param("gather", _gather_request(5), id="gather-index-out-of-bounds"),
        pytest.param("add_pair", _add_pair_request(2, 3), id="add-widths-do-not-broadcast"),
    ],
)
def test_onnxruntime_refuses_input_at_run_time(
    small_server: TurnoutProcess,
    small_stub: pb_grpc.GRPCInferenceServiceStub,
    repository: Path,
    model: str,
    body: bytes,
) -> None:
    """The request fits the signature, so only ONNX Runtime can refuse it: 400 /
    INVALID_ARGUMENT, and none of ONNX Runtime's own text (source paths, node names)."""
    reply = request(
        small_server.http_url,
        "POST",
        f"/v2/models/{model}/infer",
        body,
        {"Content-Type": "application/json"},
    )
    assert reply.status == 400, reply
    assert model in reply.error()
    good = _gather_request(2) if model == "gather" else _add_pair_request(3, 3)
    assert (
        request(small_server.http_url, "POST", f"/v2/models/{model}/infer", good, {}).status == 200
    )
    assert_serving(small_server, repository, version="1")

    tensors = json.loads(body)["inputs"]
    message = pb.ModelInferRequest(model_name=model)
    for tensor in tensors:
        field_name = "int64_contents" if tensor["datatype"] == "INT64" else "fp32_contents"
        message.inputs.append(
            _tensor(
                tensor["name"],
                tensor["datatype"],
                tuple(tensor["shape"]),
                **{field_name: tensor["data"]},
            )
        )
    error = _grpc_error(lambda: small_stub.ModelInfer(message, timeout=10))
    _check_grpc_error(error, grpc.StatusCode.INVALID_ARGUMENT, model)
    _assert_grpc_serving(small_stub, version="1")


# --- deadlines ------------------------------------------------------------------------------------


def _slow_body(iterations: int, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "ITERATIONS", "datatype": "INT64", "shape": [1], "data": [iterations]}
    return {"inputs": [tensor], **extra}


class _Busy:
    """Keeps the shared server's only ``slow`` instance running a request in a thread."""

    def __init__(self, server: TurnoutProcess) -> None:
        self.reply: Reply | None = None
        self._server = server
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        self.reply = post_json(
            self._server.http_url, "/v2/models/slow/infer", _slow_body(BUSY_ITERATIONS)
        )

    def __enter__(self) -> "_Busy":
        wait_for(lambda: inflight(self._server, "http") == 0, "no request in flight")
        self._executions = _slow_executions(self._server)
        self._thread.start()
        # The body goes out with the headers, so once the request is counted in flight it has
        # gone past decoding to ONNX Runtime (the handler awaits nothing before that).
        wait_for(lambda: inflight(self._server, "http") == 1, "the slow request in flight")
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(30)
        assert self.reply is not None
        assert self.reply.status == 200, self.reply
        assert self.reply.json()["outputs"][0]["data"] == [BUSY_ITERATIONS]
        # Only the busy request ran: the one refused for its deadline never ran late.
        assert _slow_executions(self._server) == self._executions + 1


def _slow_executions(server: TurnoutProcess) -> int:
    status, body = server.get("/v2/models/slow/versions/1/stats")
    assert status == 200, body
    executions: int = json.loads(body)["model_stats"][0]["execution_count"]
    return executions


def test_http_deadline_passed_before_run(server: TurnoutProcess, repository: Path) -> None:
    with _Busy(server):
        reply = post_json(
            server.http_url, "/v2/models/slow/infer", _slow_body(1, parameters={"timeout": 1000})
        )
        assert reply.status == 504, reply
        assert "deadline" in reply.error()
    assert_serving(server, repository)


def test_grpc_deadline_passed_before_run(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    message = pb.ModelInferRequest(
        model_name="slow",
        inputs=[_tensor("ITERATIONS", "INT64", (1,), int64_contents=[1])],
        parameters={"timeout": pb.InferParameter(int64_param=1000)},
    )
    with _Busy(server):
        error = _grpc_error(lambda: stub.ModelInfer(message, timeout=10))
        _check_grpc_error(error, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
    _assert_grpc_serving(stub)


def test_grpc_client_deadline_shorter_than_the_wait(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """The client's own gRPC deadline bounds the request: it is dropped while it waits, counted,
    and never runs (BAD_INPUTS row 18)."""
    message = pb.ModelInferRequest(
        model_name="slow", inputs=[_tensor("ITERATIONS", "INT64", (1,), int64_contents=[1])]
    )
    labels = {"endpoint": "slow", "version": "1", "protocol": "grpc"}

    def given_up(metrics: Scrape) -> float:
        return sum(
            metrics.value("turnout_requests_total", status=status, **labels)
            for status in ("deadline_exceeded", "cancelled")
        )

    before = given_up(scrape(server))
    with _Busy(server):
        error = _grpc_error(lambda: stub.ModelInfer(message, timeout=0.05))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: given_up(scrape(server)) == before + 1, "the dropped request counted")
    _assert_grpc_serving(stub)


# --- metrics after errors -------------------------------------------------------------------------


def test_errors_are_counted_and_unknown_names_make_no_labels(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    unknown = "no-such-model-e2e"
    before = scrape(server)
    post_json(server.http_url, INFER, json.loads(_mlp(datatype="FP64")))  # invalid_input, v2
    request(server.http_url, "POST", INFER, b"{", {})  # invalid_input before routing
    request(server.http_url, "POST", INFER, _mlp(), {"Content-Type": "text/plain"})
    send_raw(server.http_url, _over_default_cap_head(server))
    post_json(server.http_url, f"/v2/models/{unknown}/infer", json.loads(_mlp()))
    post_json(server.http_url, "/v2/models/mlp/versions/9/infer", json.loads(_mlp()))
    for message in (
        pb.ModelInferRequest(model_name=unknown, inputs=[_tensor()]),
        pb.ModelInferRequest(model_name="mlp", inputs=[_tensor("INPUT9")]),
    ):
        _grpc_error(functools.partial(stub.ModelInfer, message, timeout=10))
    after = scrape(server)

    def grown(endpoint: str, version: str, protocol: str, status: str) -> float:
        labels = {"endpoint": endpoint, "version": version, "protocol": protocol, "status": status}
        return after.value("turnout_requests_total", **labels) - before.value(
            "turnout_requests_total", **labels
        )

    assert grown("mlp", "2", "http", "invalid_input") == 1
    assert grown("mlp", "", "http", "invalid_input") == 1
    assert grown("mlp", "", "http", "unsupported_media_type") == 1
    assert grown("mlp", "", "http", "payload_too_large") == 1
    assert grown("_unknown", "", "http", "not_found") == 1
    assert grown("mlp", "", "http", "not_found") == 1
    assert grown("_unknown", "", "grpc", "not_found") == 1
    assert grown("mlp", "2", "grpc", "invalid_input") == 1
    assert unknown not in after.text
    assert "_unknown" in after.label_values("endpoint")
    assert after.label_values("endpoint") <= {"_unknown", *REPOSITORY_MODELS}
    assert after.label_values("version") <= {"", "1", "2"}
