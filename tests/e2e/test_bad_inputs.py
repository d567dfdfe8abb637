"""BAD_INPUTS.md as one table: every row this file owns (1, 2, 4, 6-15, 17-21, 24-27, 30, 31,
33-36) is a parametrised test whose ids start with ``rowNN``, run against a real ``turnout serve``.

After every bad request the server must still be live (``GET /v2/health/live`` answers 200) and
still answer a good mlp request, over HTTP and over gRPC, with what ONNX Runtime itself computes
from the model file. Every HTTP error is exactly ``{"error": "..."}`` with the table's status,
every gRPC error the table's code, and no message carries a path, a traceback or an internal name.

The servers: the shared one (``server``: the test repository), the small one (``small_server``: a
4 KiB request cap), and this file's ``gateway`` (the admin API on, slow models for the queue and
deadline rows, models whose runs answer the wrong rows or always fail, a result cache, files that
cannot load). The lifecycle rows (24-26) and the YAML row (35) start processes of their own.

Other files hold narrower tests of the same rows (test_errors.py, test_queue.py,
test_lifecycle.py, test_admin.py, test_repository_api.py, test_batching.py); the cases here are
the ones those do not already assert, or the same fault through another client or transport.
"""

import functools
import gzip
import http.client
import json
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.bad_input_models import (
    always_fails,
    bfloat16_identity,
    collapsed_rows,
    doubled_rows,
    write_empty_model,
)
from tests.support.batching_models import BUSY_STEPS, slow_echo, slow_text
from tests.support.e2e import (
    SMALL_MAX_REQUEST_BYTES,
    assert_mlp_outputs,
    assert_serving,
    mlp_json_request,
    mlp_reference,
    mlp_rows,
    scrape,
    write_config,
)
from tests.support.e2e_models import gather_rows, write_garbage_model
from tests.support.onnx_models import REPOSITORY_MODELS, write_model
from tests.support.polling import wait_for
from tests.support.prometheus import Scrape
from tests.support.rawhttp import Reply, assert_no_leak, post_json, request, send_raw
from tests.support.routing import Admin, HttpSession, admin_env, bearer
from tests.support.scheduling import (
    Busy,
    InThread,
    Outcome,
    busy_echo,
    echo_body,
    echo_message,
    executions_by_batch_size,
    grown,
    http_echo,
    json_array,
    launched,
    model_stats,
    queue_depth,
    raw_outputs,
    series,
    stub_echo,
    triton_grpc_echo,
    triton_http_echo,
)
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

# What no error message may contain, whatever the request held.
FORBIDDEN = ("Traceback", "/work", ".py", "onnxruntime", "Exception")
# A message about a huge input names it shortened: far shorter than the input.
SHORT_MESSAGE = 400
JSON = {"Content-Type": "application/json"}
INFER = "/v2/models/mlp/infer"
SHARED, SMALL, GATEWAY = "shared", "small", "gateway"
HUGE = 10_000
# How long a request queued behind a slow one may take on a loaded machine.
PATIENT_S = 60.0
# The slow request when several calls must arrive and queue behind it before it ends (loop
# steps: about two seconds; BUSY_STEPS, about one, where one request waits behind it).
CROWDED_STEPS = 2 * BUSY_STEPS
# A request that runs far longer than any test waits (the slow models' loop steps).
ENDLESS_STEPS = 200_000_000
TURNOUT = Path(sys.executable).parent / "turnout"


# --- what every case checks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    """A running server, a gRPC stub on it, and the mlp files it serves."""

    process: TurnoutProcess
    stub: pb_grpc.GRPCInferenceServiceStub
    repository: Path  # holds mlp/<version>/model.onnx
    version: str  # the version the mlp endpoint routes to


def check_message(message: str) -> str:
    """A client-facing message: present, bounded, and free of anything internal."""
    assert message, "an error without a message"
    assert len(message) < 1000, message
    for word in FORBIDDEN:
        assert word not in message, f"{word!r} in {message!r}"
    assert_no_leak(message)
    return message


def check_http_error(reply: Reply, status: int, fragments: Sequence[str] = ()) -> str:
    """``reply`` is ``status`` with the one error body; returns the message."""
    assert reply.status == status, reply
    message = check_message(reply.error())
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def check_grpc_error(
    error: grpc.RpcError, code: grpc.StatusCode, fragments: Sequence[str] = ()
) -> str:
    """``error`` has ``code`` and a clean message; returns the message."""
    assert error.code() == code, (error.code(), error.details())
    message = check_message(error.details() or "")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def check_client_error(
    error: InferenceServerException, status: str, fragments: Sequence[str] = ()
) -> str:
    """What a Triton client raised: ``status`` is an HTTP status ("400") or a gRPC code name
    ("INVALID_ARGUMENT")."""
    assert str(error.status()).removeprefix("StatusCode.") == status, error
    message = check_message(error.message() or "")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def grpc_failure(call: Callable[[], object]) -> grpc.RpcError:
    """The error ``call`` fails with."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def assert_still_serving(target: Served) -> None:
    """Live, and a good mlp request answered with ONNX Runtime's outputs over both protocols."""
    assert_serving(target.process, target.repository, target.version)
    rows = mlp_rows(3, seed=321)
    tensor = pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[3, 64])
    response = target.stub.ModelInfer(
        pb.ModelInferRequest(
            model_name="mlp", inputs=[tensor], raw_input_contents=[rows.tobytes()]
        ),
        timeout=10,
    )
    assert response.model_version == target.version
    assert_mlp_outputs(
        raw_outputs(response), mlp_reference(target.repository, target.version, rows)
    )


def executions(process: TurnoutProcess) -> dict[tuple[str, str], int]:
    """How many times each version has run ONNX Runtime so far."""
    status, body = process.get("/v2/models/stats")
    assert status == 200, body
    return {
        (stats["name"], stats["version"]): stats["execution_count"]
        for stats in json.loads(body)["model_stats"]
    }


def patient_post(process: TurnoutProcess, path: str, document: Any) -> Reply:
    """POST ``document`` as JSON, waiting up to PATIENT_S for the answer (a request queued
    behind a slow one on a loaded machine can take longer than rawhttp's 10 s)."""
    return post_json(process.http_url, path, document, timeout_s=PATIENT_S)


def patient_echo(
    process: TurnoutProcess, model: str, values: np.ndarray, timeout_us: int | None = None
) -> Outcome:
    """``http_echo`` with PATIENT_S to wait."""
    extra = {"parameters": {"timeout": timeout_us}} if timeout_us is not None else {}
    reply = patient_post(process, f"/v2/models/{model}/infer", echo_body(values, **extra))
    if reply.status != 200:
        return Outcome(str(reply.status), reply.error(), reply.headers)
    return Outcome("200", headers=reply.headers, values=json_array(reply, "Y"))


def until(probe: Callable[[], object], what: str) -> None:
    """Wait (up to PATIENT_S) until ``probe`` is true."""
    wait_for(lambda: probe() or None, what, timeout_s=PATIENT_S)


def _encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def _tensor(name: str, datatype: str, shape: Sequence[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


def _mlp_tensor(rows: int = 1, **overrides: Any) -> dict[str, Any]:
    tensor = _tensor("INPUT0", "FP32", (rows, 64), [0.25] * (64 * rows))
    tensor.update(overrides)
    return tensor


def _mlp_body(rows: int = 1, **overrides: Any) -> bytes:
    return _encode({"inputs": [_mlp_tensor(rows, **overrides)]})


def _binary(header: Mapping[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = _encode(header)
    return encoded + blob, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(encoded)),
    }


def _prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def _raw_tensor(
    name: str, datatype: str, shape: Sequence[int]
) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))


def _typed(
    name: str, datatype: str, shape: Sequence[int], **contents: Sequence[Any]
) -> pb.ModelInferRequest.InferInputTensor:
    tensor = _raw_tensor(name, datatype, shape)
    for field_name, values in contents.items():
        getattr(tensor.contents, field_name).extend(values)
    return tensor


def _good_grpc_tensor(rows: int = 1) -> pb.ModelInferRequest.InferInputTensor:
    return _typed("INPUT0", "FP32", (rows, 64), fp32_contents=[0.25] * (64 * rows))


# --- servers --------------------------------------------------------------------------------------

# Models whose files cannot be served; each fails to load at start while the rest serve.
BROKEN = ("garbage", "empty", "bf16")
AB_BASELINE = {"policy": "canary", "weights": {"1": 90.0, "2": 10.0}}
BOUNDED_QUEUE = 2
CACHED_QUEUE = 1


@dataclass(frozen=True, slots=True)
class Gateway:
    """This file's own server, where it keeps its state, and what it logged while starting."""

    served: Served
    state_dir: Path
    startup_logs: str


@pytest.fixture(scope="module")
def gateway(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``turnout serve --config`` with the admin API on (TURNOUT_ADMIN_TOKEN) and a model root:
    mlp 1 and 2 (routed to the latest), ``ab`` 1 and 2 (a canary), slow echo models for the
    queue and deadline rows, models whose runs answer the wrong number of rows or fail whatever
    the input, a cached echo and a cached gather, and three files that cannot load."""
    root = tmp_path_factory.mktemp("bad_inputs")
    models = root / "models"
    write_model(slow_echo(), models / "echo.onnx")
    write_model(slow_text(), models / "text.onnx")
    write_model(collapsed_rows(), models / "collapsed.onnx")
    write_model(doubled_rows(), models / "doubled.onnx")
    write_model(always_fails(), models / "fails.onnx")
    write_model(gather_rows(), models / "gather.onnx")
    write_model(bfloat16_identity(), models / "bf16.onnx")
    write_garbage_model(models / "garbage.onnx")
    write_empty_model(models / "empty.onnx")
    model_root = root / "model_root"
    for version in ("1", "2"):
        target = model_root / "mlp" / version
        target.mkdir(parents=True)
        shutil.copy(repository / "mlp" / version / "model.onnx", target / "model.onnx")
    mlp = {version: str(repository / "mlp" / version / "model.onnx") for version in ("1", "2")}
    cpu = {"version": 1, "device": "cpu"}
    echo = {"path": "models/echo.onnx", **cpu}
    config = write_config(
        root / "turnout.yaml",
        {
            "models": [
                {"name": "mlp", "version": 1, "path": mlp["1"]},
                {"name": "mlp", "version": 2, "path": mlp["2"]},
                {"name": "ab", "version": 1, "path": mlp["1"]},
                {"name": "ab", "version": 2, "path": mlp["2"]},
                {"name": "bounded", "max_queue_size": BOUNDED_QUEUE, **echo},
                {"name": "deadline", **echo},
                {"name": "widths", **echo},
                {"name": "text", "path": "models/text.onnx", **cpu},
                {"name": "collapsed", "path": "models/collapsed.onnx", **cpu},
                {"name": "doubled", "path": "models/doubled.onnx", **cpu},
                {
                    "name": "fails",
                    "path": "models/fails.onnx",
                    "warmup": False,
                    "session": {"graph_optimization": "disabled"},
                    **cpu,
                },
                {
                    "name": "cached",
                    "max_queue_size": CACHED_QUEUE,
                    "cache": {"max_bytes": 1 << 20},
                    **echo,
                },
                {
                    "name": "cached_gather",
                    "path": "models/gather.onnx",
                    "cache": {"max_bytes": 1 << 20},
                    **cpu,
                },
                *({"name": name, "path": f"models/{name}.onnx", **cpu} for name in BROKEN),
                {"name": "unloading", **echo},
                {"name": "unloading", **echo, "version": 2},
            ],
            "routes": {"ab": AB_BASELINE, "unloading": {"policy": "fixed", "version": "1"}},
            "model_root": "model_root",
        },
    )
    state_dir = root / "state"
    with (
        TurnoutProcess(
            ["--config", str(config), "--state-dir", str(state_dir)],
            root / "run",
            env=admin_env(),
        ) as process,
        grpc.insecure_channel(process.grpc_url) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        yield Gateway(Served(process, stub, repository, "2"), state_dir, process.logs())
        # Internal faults are logged with their traceback on purpose (rows 14 and 21); the
        # process must still stop cleanly.
        assert process.stop() == 0, process.logs()


@pytest.fixture(scope="module")
def shared(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub, repository: Path
) -> Served:
    """The shared server."""
    return Served(server, stub, repository, "2")


@pytest.fixture(scope="module")
def small(
    small_server: TurnoutProcess, small_stub: pb_grpc.GRPCInferenceServiceStub, repository: Path
) -> Served:
    """The server with a 4 KiB request cap."""
    return Served(small_server, small_stub, repository, "1")


def _target(fixtures: pytest.FixtureRequest, name: str) -> Served:
    """The server a case names, started only when a selected case needs it."""
    if name == GATEWAY:
        gateway: Gateway = fixtures.getfixturevalue("gateway")
        return gateway.served
    served: Served = fixtures.getfixturevalue(name)
    return served


# --- rows 6-12, 14 and 36 over plain HTTP: one request, one error ----------------------------


@dataclass(frozen=True)
class HttpCase:
    """A bad HTTP request, the status it must get and what the message must name."""

    row: int
    name: str
    path: str
    body: bytes | None
    status: int
    fragments: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON))
    method: str = "POST"
    target: str = SHARED
    runs: bool = False  # ONNX Runtime may run (it is what refuses the request)
    short: bool = False  # the input was huge: the message must not be
    xfail: str | None = None

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"row{self.row:02d}-{self.name}"


def _params(cases: Sequence[Any]) -> list[Any]:
    """pytest params of cases with ``id`` and ``xfail`` (a strict xfail for a known bug)."""
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else [],
        )
        for case in cases
    ]


ONE_FLOAT = np.float32(0.25).tobytes()
BINARY_BAD_JSON = (
    b"{not json}",
    {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "10"},
)
BYTES_LEFT_OVER = _binary(
    {
        "inputs": [
            {
                "name": "TEXT",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 9},
            }
        ]
    },
    _prefixed(b"ab") + b"xyz",
)
BYTES_CLAIMS_ALL = _binary(
    {
        "inputs": [
            {
                "name": "TEXT",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 7},
            }
        ]
    },
    struct.pack("<I", 0xFFFFFFFF) + b"abc",
)
MANY_STRINGS = [b"s" * 30] * 200
BYTES_TOTAL_OVER_CAP = _binary(
    {
        "inputs": [
            {
                "name": "TEXT",
                "datatype": "BYTES",
                "shape": [len(MANY_STRINGS)],
                "parameters": {"binary_data_size": len(_prefixed(*MANY_STRINGS))},
            }
        ]
    },
    _prefixed(*MANY_STRINGS),
)
HUGE_STRING_BYTES = 4 << 20  # far past any sensible per-element cap, far below the body cap

HTTP_CASES = [
    # Row 6: malformed JSON, wrong Content-Type, empty body.
    HttpCase(6, "trailing-garbage", INFER, b'{"inputs": []} xyz', 400, ("malformed JSON",)),
    HttpCase(
        6,
        "nan-literal",
        INFER,
        b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [NaN]}]}',
        400,
        ("malformed JSON",),
    ),
    HttpCase(6, "nested-100k-deep", INFER, b"[" * 100_000, 400, ("malformed JSON",)),
    HttpCase(6, "invalid-utf8", INFER, b'{"id": "\xff\xfe", "inputs": []}', 400, ("JSON",)),
    HttpCase(6, "utf16-body", INFER, '{"inputs": []}'.encode("utf-16"), 400, ("JSON",)),
    HttpCase(6, "byte-order-mark", INFER, b'\xef\xbb\xbf{"inputs": []}', 400, ("JSON",)),
    HttpCase(6, "json-null", INFER, b"null", 400, ("JSON object",)),
    HttpCase(6, "whitespace-only", INFER, b"  \r\n\t ", 400, ("JSON",)),
    HttpCase(6, "empty-object", INFER, b"{}", 400, ("inputs",)),
    HttpCase(
        6,
        "number-overflows-to-infinity",
        INFER,
        b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1e400]}]}',
        400,
    ),
    HttpCase(
        6,
        "form-urlencoded",
        INFER,
        _mlp_body(),
        415,
        ("Content-Type",),
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
    HttpCase(
        6,
        "multipart",
        INFER,
        _mlp_body(),
        415,
        ("Content-Type",),
        {"Content-Type": "multipart/form-data; boundary=x"},
    ),
    HttpCase(
        6, "text-json", INFER, _mlp_body(), 415, ("Content-Type",), {"Content-Type": "text/json"}
    ),
    HttpCase(
        6,
        "gzip-of-malformed-json",
        INFER,
        gzip.compress(b'{"inputs": ['),
        400,
        ("malformed JSON",),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ),
    HttpCase(
        6,
        "binary-header-not-json",
        INFER,
        BINARY_BAD_JSON[0],
        400,
        ("malformed JSON",),
        BINARY_BAD_JSON[1],
    ),
    HttpCase(
        6, "feedback-malformed", "/v2/models/mlp/feedback", b'{"request_id": ', 400, ("JSON",)
    ),
    HttpCase(6, "feedback-empty", "/v2/models/mlp/feedback", b"", 400),
    # Row 7: the shape's element count against the data's.
    HttpCase(
        7,
        "nested-rows-short",
        INFER,
        _mlp_body(2, data=[[0.25] * 64]),
        400,
        ("needs 128 elements", "data has 64"),
    ),
    HttpCase(
        7,
        "two-rows-n-plus-2",
        INFER,
        _mlp_body(2, data=[0.25] * 130),
        400,
        ("needs 128 elements", "data has 130"),
    ),
    HttpCase(
        7, "scalar-data", INFER, _mlp_body(data=0.25), 400, ("needs 64 elements", "data has 1")
    ),
    HttpCase(
        7,
        "no-data",
        INFER,
        _encode({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64]}]}),
        400,
        ("no data",),
    ),
    HttpCase(
        7,
        "shape-of-2-62-squared",
        INFER,
        _mlp_body(shape=[2**62, 2**62]),
        400,
        ("shape",),
    ),
    # Row 8: datatypes and ranks, refused before ONNX Runtime runs.
    HttpCase(
        8,
        "datatype-lower-case",
        INFER,
        _mlp_body(datatype="fp32"),
        400,
        ("unknown datatype 'fp32'",),
    ),
    HttpCase(8, "datatype-empty", INFER, _mlp_body(datatype=""), 400, ("unknown datatype",)),
    HttpCase(
        8,
        "bytes-to-a-float-input",
        INFER,
        _mlp_body(datatype="BYTES", data=["x"] * 64),
        400,
        ("expected datatype FP32, got BYTES",),
    ),
    HttpCase(
        8,
        "float-to-a-bytes-input",
        "/v2/models/strings/infer",
        _encode({"inputs": [_tensor("TEXT", "FP32", (2,), [1.0, 2.0])]}),
        400,
        ("expected datatype BYTES, got FP32",),
    ),
    HttpCase(
        8,
        "rank-0",
        INFER,
        _mlp_body(shape=[], data=[0.25]),
        400,
        ("expected shape [-1, 64], got []",),
    ),
    HttpCase(
        8,
        "batch-dim-on-a-model-without-one",
        "/v2/models/slow/infer",
        _encode({"inputs": [_tensor("ITERATIONS", "INT64", (1, 1), [1])]}),
        400,
        ("expected shape [1], got [1, 1]",),
    ),
    # Row 9: missing, unknown and duplicate inputs, listing the names.
    HttpCase(
        9,
        "all-twelve-missing",
        "/v2/models/all_types/infer",
        _encode({"inputs": []}),
        400,
        ("missing input", "'IN_BOOL'", "'IN_INT32'", "4 more"),
    ),
    HttpCase(
        9,
        "name-in-lower-case",
        INFER,
        _mlp_body(name="input0"),
        400,
        ("unknown input 'input0'", "'INPUT0'"),
    ),
    HttpCase(
        9,
        "extra-unknown-input",
        INFER,
        _encode({"inputs": [_mlp_tensor(), _mlp_tensor(name="EXTRA")]}),
        400,
        ("unknown input 'EXTRA'",),
    ),
    HttpCase(9, "empty-name", INFER, _mlp_body(name=""), 400, ("unknown input ''",)),
    HttpCase(9, "name-not-a-string", INFER, _mlp_body(name=42), 400, ("name must be a string",)),
    # Row 10: BYTES element counts and sizes.
    HttpCase(
        10,
        "json-n-plus-1",
        "/v2/models/strings/infer",
        _encode({"inputs": [_tensor("TEXT", "BYTES", (2,), ["a", "b", "c"])]}),
        400,
        ("needs 2 elements", "data has 3"),
    ),
    HttpCase(
        10,
        "raw-bytes-left-over",
        "/v2/models/strings/infer",
        BYTES_LEFT_OVER[0],
        400,
        ("left over",),
        BYTES_LEFT_OVER[1],
    ),
    HttpCase(
        10,
        "raw-element-claims-4-gib",
        "/v2/models/strings/infer",
        BYTES_CLAIMS_ALL[0],
        400,
        ("BYTES element 0",),
        BYTES_CLAIMS_ALL[1],
    ),
    HttpCase(
        10,
        "one-4-mib-string",
        "/v2/models/strings/infer",
        _encode({"inputs": [_tensor("TEXT", "BYTES", (1,), ["s" * HUGE_STRING_BYTES])]}),
        400,
        ("'TEXT'", "BYTES element 0"),
        short=True,
    ),
    HttpCase(
        10,
        "total-over-the-cap",
        "/v2/models/strings/infer",
        BYTES_TOTAL_OVER_CAP[0],
        413,
        (str(SMALL_MAX_REQUEST_BYTES),),
        BYTES_TOTAL_OVER_CAP[1],
        target=SMALL,
    ),
    # Row 11: batches over max_batch_size (64 for mlp and strings).
    HttpCase(11, "batch-1000", INFER, _mlp_body(1000), 400, ("1000", "1..64")),
    HttpCase(
        11,
        "bytes-batch-65",
        "/v2/models/strings/infer",
        _encode({"inputs": [_tensor("TEXT", "BYTES", (65,), ["t"] * 65)]}),
        400,
        ("1..64",),
    ),
    HttpCase(
        11,
        "inputs-disagree-on-the-batch",
        "/v2/models/add_pair/infer",
        _encode(
            {
                "inputs": [
                    _tensor("A", "FP32", (1, 3), [1.0] * 3),
                    _tensor("B", "FP32", (2, 3), [1.0] * 6),
                ]
            }
        ),
        400,
        ("batch", "'A' has 1", "'B' has 2"),
        target=SMALL,
    ),
    # Row 12: unknown models and versions.
    HttpCase(
        12, "model-name-case", "/v2/models/MLP/infer", _mlp_body(), 404, ("unknown model 'MLP'",)
    ),
    HttpCase(12, "model-dotdot", "/v2/models/../infer", _mlp_body(), 404, ("unknown model '..'",)),
    HttpCase(
        12,
        "version-1.0",
        "/v2/models/mlp/versions/1.0/infer",
        _mlp_body(),
        404,
        ("no version '1.0'",),
    ),
    HttpCase(
        12, "version-0", "/v2/models/mlp/versions/0/infer", _mlp_body(), 404, ("no version '0'",)
    ),
    HttpCase(
        12,
        "version-negative",
        "/v2/models/mlp/versions/-1/infer",
        _mlp_body(),
        404,
        ("no version '-1'",),
    ),
    HttpCase(12, "version-empty", "/v2/models/mlp/versions//infer", _mlp_body(), 404),
    HttpCase(
        12,
        "feedback-unknown-model",
        "/v2/models/nope/feedback",
        _encode({"request_id": "r", "reward": 1}),
        404,
        ("nope",),
    ),
    # Row 14: ONNX Runtime refuses what the input holds (the small server's extra models).
    HttpCase(
        14,
        "gather-negative-index-out-of-range",
        "/v2/models/gather/infer",
        _encode({"inputs": [_tensor("INDEX", "INT64", (2,), [0, -4])]}),
        400,
        ("gather",),
        target=SMALL,
        runs=True,
    ),
    # Row 36: huge or odd input on an error path: only public names, shortened.
    HttpCase(
        36,
        "huge-output-name",
        INFER,
        _encode({"inputs": [_mlp_tensor()], "outputs": [{"name": "o" * HUGE}]}),
        400,
        ("unknown output 'oooo",),
        short=True,
    ),
    HttpCase(
        36,
        "huge-id",
        INFER,
        _encode({"id": "i" * HUGE, "inputs": [_mlp_tensor()]}),
        400,
        ("id",),
        short=True,
    ),
    HttpCase(
        36,
        "huge-parameter-name",
        INFER,
        _encode({"inputs": [_mlp_tensor()], "parameters": {"p" * HUGE: [1]}}),
        400,
        ("parameters",),
        short=True,
    ),
    HttpCase(
        36,
        "huge-version",
        f"/v2/models/mlp/versions/{'9' * HUGE}/infer",
        _mlp_body(),
        404,
        ("no version '9999",),
        short=True,
    ),
    HttpCase(
        36,
        "huge-feedback-request-id",
        "/v2/models/mlp/feedback",
        _encode({"request_id": "r" * HUGE, "reward": 1}),
        404,
        ("rrrr",),
        short=True,
    ),
    HttpCase(
        36,
        "control-characters-in-an-output-name",
        INFER,
        _encode({"inputs": [_mlp_tensor()], "outputs": [{"name": "OUT\u0000\u202e\r\nPUT"}]}),
        400,
        ("unknown output",),
    ),
]


@pytest.mark.parametrize("case", _params(HTTP_CASES))
def test_http_bad_request(request: pytest.FixtureRequest, case: HttpCase) -> None:
    target = _target(request, case.target)
    before = executions(target.process)
    reply = send_http(target, case.method, case.path, case.body, case.headers)
    message = check_http_error(reply, case.status, case.fragments)
    if case.short:
        assert len(message) < SHORT_MESSAGE, message
    if not case.runs:
        assert executions(target.process) == before, "decided before ONNX Runtime runs"
    assert_still_serving(target)


def send_http(
    target: Served, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
) -> Reply:
    """One request on a fresh connection."""
    return request(target.process.http_url, method, path, body, headers)


# --- rows 7-12, 14, 36 over gRPC (Turnout's own stub: what Triton's client cannot send) --------


@dataclass(frozen=True)
class GrpcCase:
    """A bad ModelInfer and the code it must get."""

    row: int
    name: str
    message: pb.ModelInferRequest
    code: grpc.StatusCode
    fragments: tuple[str, ...] = ()
    target: str = SHARED
    runs: bool = False
    short: bool = False
    xfail: str | None = None

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"row{self.row:02d}-{self.name}"


INVALID = grpc.StatusCode.INVALID_ARGUMENT
MLP_RAW = mlp_rows(1).tobytes()

GRPC_CASES = [
    GrpcCase(
        7,
        "typed-two-rows-short",
        pb.ModelInferRequest(
            model_name="mlp", inputs=[_typed("INPUT0", "FP32", (2, 64), fp32_contents=[0.5] * 100)]
        ),
        INVALID,
        ("needs 128 elements", "100"),
    ),
    GrpcCase(
        7,
        "shape-of-2-62-squared",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_raw_tensor("INPUT0", "FP32", (2**62, 2**62))],
            raw_input_contents=[MLP_RAW],
        ),
        INVALID,
        ("shape",),
    ),
    GrpcCase(
        8,
        "rank-3",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_raw_tensor("INPUT0", "FP32", (1, 1, 64))],
            raw_input_contents=[MLP_RAW],
        ),
        INVALID,
        ("expected shape [-1, 64], got [1, 1, 64]",),
    ),
    GrpcCase(
        8,
        "raw-int64-to-a-float-input",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_raw_tensor("INPUT0", "INT64", (1, 64))],
            raw_input_contents=[np.zeros((1, 64), "<i8").tobytes()],
        ),
        INVALID,
        ("expected datatype FP32, got INT64",),
    ),
    GrpcCase(
        9,
        "duplicate-raw-inputs",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_raw_tensor("INPUT0", "FP32", (1, 64))] * 2,
            raw_input_contents=[MLP_RAW, MLP_RAW],
        ),
        INVALID,
        ("duplicate input 'INPUT0'",),
    ),
    GrpcCase(
        10,
        "raw-bytes-one-element-short",
        pb.ModelInferRequest(
            model_name="strings",
            inputs=[_raw_tensor("TEXT", "BYTES", (3,))],
            raw_input_contents=[_prefixed(b"a", b"b")],
        ),
        INVALID,
        ("3",),
    ),
    GrpcCase(
        10,
        "one-4-mib-string",
        pb.ModelInferRequest(
            model_name="strings",
            inputs=[_typed("TEXT", "BYTES", (1,), bytes_contents=[b"s" * HUGE_STRING_BYTES])],
        ),
        INVALID,
        ("'TEXT'", "BYTES element 0"),
        short=True,
    ),
    GrpcCase(
        11,
        "batch-1000-raw",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_raw_tensor("INPUT0", "FP32", (1000, 64))],
            raw_input_contents=[mlp_rows(1000).tobytes()],
        ),
        INVALID,
        ("1..64",),
    ),
    GrpcCase(
        12,
        "version-0",
        pb.ModelInferRequest(model_name="mlp", model_version="0", inputs=[_good_grpc_tensor()]),
        grpc.StatusCode.NOT_FOUND,
        ("no version '0'",),
    ),
    GrpcCase(
        12,
        "empty-model-name",
        pb.ModelInferRequest(model_name="", inputs=[_good_grpc_tensor()]),
        grpc.StatusCode.NOT_FOUND,
    ),
    GrpcCase(
        14,
        "add-widths-that-do-not-broadcast",
        pb.ModelInferRequest(
            model_name="add_pair",
            inputs=[
                _typed("A", "FP32", (1, 4), fp32_contents=[1.0] * 4),
                _typed("B", "FP32", (1, 3), fp32_contents=[1.0] * 3),
            ],
        ),
        INVALID,
        ("add_pair",),
        target=SMALL,
        runs=True,
    ),
    GrpcCase(
        36,
        "huge-datatype",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_raw_tensor("INPUT0", "Q" * HUGE, (1, 64))],
            raw_input_contents=[MLP_RAW],
        ),
        INVALID,
        ("unknown datatype 'QQQ",),
        short=True,
    ),
    GrpcCase(
        36,
        "odd-input-name",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_raw_tensor("IN\u0000'\"\u202ePUT\n", "FP32", (1, 64))],
            raw_input_contents=[MLP_RAW],
        ),
        INVALID,
        ("unknown input",),
    ),
    GrpcCase(
        36,
        "huge-requested-output",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_good_grpc_tensor()],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="o" * HUGE)],
        ),
        INVALID,
        ("unknown output 'oooo",),
        short=True,
    ),
    GrpcCase(
        36,
        "huge-version",
        pb.ModelInferRequest(
            model_name="mlp", model_version="7" * HUGE, inputs=[_good_grpc_tensor()]
        ),
        grpc.StatusCode.NOT_FOUND,
        ("no version '7777",),
        short=True,
    ),
    GrpcCase(
        36,
        "huge-parameter-value",
        pb.ModelInferRequest(
            model_name="mlp",
            inputs=[_good_grpc_tensor()],
            parameters={"timeout": pb.InferParameter(string_param="t" * HUGE)},
        ),
        INVALID,
        ("timeout",),
        short=True,
    ),
]


@pytest.mark.parametrize("case", _params(GRPC_CASES))
def test_grpc_bad_request(request: pytest.FixtureRequest, case: GrpcCase) -> None:
    target = _target(request, case.target)
    before = executions(target.process)
    error = grpc_failure(lambda: target.stub.ModelInfer(case.message, timeout=10))
    message = check_grpc_error(error, case.code, case.fragments)
    if case.short:
        assert len(message) < SHORT_MESSAGE, message
    if not case.runs:
        assert executions(target.process) == before, "decided before ONNX Runtime runs"
    assert_still_serving(target)


# --- rows 1, 7-12, 14 with Triton's own clients, as applications send them -----------------------


@dataclass(frozen=True)
class ClientCase:
    """A bad request a real Triton client sends (``send`` must raise), and what it must see."""

    row: int
    name: str
    send: Callable[[Served], object]
    status: str  # "400" over HTTP, "INVALID_ARGUMENT" over gRPC
    fragments: tuple[str, ...] = ()
    target: str = SHARED
    runs: bool = False
    xfail: str | None = None

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"row{self.row:02d}-{self.name}"


def _http_input(
    name: str,
    array: np.ndarray,
    datatype: str,
    shape: Sequence[int] | None = None,
    binary: bool = True,
) -> Any:
    """A tritonclient HTTP input holding ``array``, declaring ``shape`` when given."""
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    if shape is not None:
        tensor.set_shape(list(shape))
    return tensor


def _grpc_input(
    name: str, array: np.ndarray, datatype: str, shape: Sequence[int] | None = None
) -> Any:
    """A tritonclient gRPC input holding ``array``, declaring ``shape`` when given."""
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    if shape is not None:
        tensor.set_shape(list(shape))
    return tensor


def _via_http(
    model: str, inputs: Callable[[], list[Any]], outputs: Sequence[str] = (), version: str = ""
) -> Callable[[Served], object]:
    def send(target: Served) -> object:
        client = httpclient.InferenceServerClient(target.process.http_url, network_timeout=30)
        try:
            wanted = [httpclient.InferRequestedOutput(name) for name in outputs] or None
            return client.infer(model, inputs(), model_version=version, outputs=wanted)
        finally:
            client.close()

    return send


def _via_grpc(
    model: str, inputs: Callable[[], list[Any]], outputs: Sequence[str] = (), version: str = ""
) -> Callable[[Served], object]:
    def send(target: Served) -> object:
        client = grpcclient.InferenceServerClient(target.process.grpc_url)
        try:
            wanted = [grpcclient.InferRequestedOutput(name) for name in outputs] or None
            return client.infer(
                model, inputs(), model_version=version, outputs=wanted, client_timeout=30
            )
        finally:
            client.close()

    return send


def _rows(batch: int) -> np.ndarray:
    return mlp_rows(batch, seed=batch)


TEXT = np.array([b"alpha", b"beta"], dtype=np.object_)

CLIENT_CASES = [
    ClientCase(
        1,
        "http-binary-body-over-the-cap",
        _via_http("mlp", lambda: [_http_input("INPUT0", _rows(32), "FP32")]),
        "413",
        (str(SMALL_MAX_REQUEST_BYTES),),
        target=SMALL,
    ),
    ClientCase(
        7,
        "http-binary-shape-66-data-64",
        _via_http("mlp", lambda: [_http_input("INPUT0", _rows(1), "FP32", (1, 66))]),
        "400",
        ("needs 264 bytes", "got 256"),
    ),
    ClientCase(
        7,
        "http-json-shape-66-data-64",
        _via_http("mlp", lambda: [_http_input("INPUT0", _rows(1), "FP32", (1, 66), binary=False)]),
        "400",
        ("needs 66 elements", "data has 64"),
    ),
    ClientCase(
        7,
        "grpc-raw-shape-66-data-64",
        _via_grpc("mlp", lambda: [_grpc_input("INPUT0", _rows(1), "FP32", (1, 66))]),
        "INVALID_ARGUMENT",
        ("needs 264 bytes", "got 256"),
    ),
    ClientCase(
        8,
        "grpc-fp64-to-fp32",
        _via_grpc("mlp", lambda: [_grpc_input("INPUT0", _rows(1).astype(np.float64), "FP64")]),
        "INVALID_ARGUMENT",
        ("expected datatype FP32, got FP64",),
    ),
    ClientCase(
        8,
        "http-int32-to-fp32",
        _via_http("mlp", lambda: [_http_input("INPUT0", np.ones((1, 64), np.int32), "INT32")]),
        "400",
        ("expected datatype FP32, got INT32",),
    ),
    ClientCase(
        9,
        "grpc-unknown-input-name",
        _via_grpc("mlp", lambda: [_grpc_input("INPUT1", _rows(1), "FP32")]),
        "INVALID_ARGUMENT",
        ("unknown input 'INPUT1'", "'INPUT0'"),
    ),
    ClientCase(
        9,
        "http-duplicate-inputs",
        _via_http(
            "mlp",
            lambda: [
                _http_input("INPUT0", _rows(1), "FP32"),
                _http_input("INPUT0", _rows(1), "FP32"),
            ],
        ),
        "400",
        ("duplicate input 'INPUT0'",),
    ),
    ClientCase(
        9,
        "grpc-unknown-output",
        _via_grpc("mlp", lambda: [_grpc_input("INPUT0", _rows(1), "FP32")], outputs=("LABELS",)),
        "INVALID_ARGUMENT",
        ("unknown output 'LABELS'",),
    ),
    ClientCase(
        10,
        "grpc-bytes-shape-3-data-2",
        _via_grpc("strings", lambda: [_grpc_input("TEXT", TEXT, "BYTES", (3,))]),
        "INVALID_ARGUMENT",
        ("3",),
    ),
    ClientCase(
        10,
        "http-bytes-shape-3-data-2",
        _via_http("strings", lambda: [_http_input("TEXT", TEXT, "BYTES", (3,))]),
        "400",
        ("3",),
    ),
    ClientCase(
        11,
        "http-binary-batch-65",
        _via_http("mlp", lambda: [_http_input("INPUT0", _rows(65), "FP32")]),
        "400",
        ("65", "1..64"),
    ),
    ClientCase(
        11,
        "grpc-batch-65",
        _via_grpc("mlp", lambda: [_grpc_input("INPUT0", _rows(65), "FP32")]),
        "INVALID_ARGUMENT",
        ("65", "1..64"),
    ),
    ClientCase(
        12,
        "http-unknown-model",
        _via_http("mlp-v3", lambda: [_http_input("INPUT0", _rows(1), "FP32")]),
        "404",
        ("unknown model 'mlp-v3'",),
    ),
    ClientCase(
        12,
        "grpc-unknown-version",
        _via_grpc("mlp", lambda: [_grpc_input("INPUT0", _rows(1), "FP32")], version="3"),
        "NOT_FOUND",
        ("no version '3'",),
    ),
    ClientCase(
        14,
        "grpc-gather-index-out-of-range",
        _via_grpc("gather", lambda: [_grpc_input("INDEX", np.array([1, 9], np.int64), "INT64")]),
        "INVALID_ARGUMENT",
        ("gather",),
        target=SMALL,
        runs=True,
    ),
    ClientCase(
        14,
        "http-add-widths-that-do-not-broadcast",
        _via_http(
            "add_pair",
            lambda: [
                _http_input("A", np.ones((2, 2), np.float32), "FP32"),
                _http_input("B", np.ones((2, 5), np.float32), "FP32"),
            ],
        ),
        "400",
        ("add_pair",),
        target=SMALL,
        runs=True,
    ),
]


@pytest.mark.parametrize("case", _params(CLIENT_CASES))
def test_triton_client_bad_request(request: pytest.FixtureRequest, case: ClientCase) -> None:
    target = _target(request, case.target)
    before = executions(target.process)
    with pytest.raises(InferenceServerException) as caught:
        case.send(target)
    check_client_error(caught.value, case.status, case.fragments)
    if not case.runs:
        assert executions(target.process) == before, "decided before ONNX Runtime runs"
    assert_still_serving(target)


# --- rows 1, 2 and 4 on raw sockets: what no client library sends ------------------------------


@dataclass(frozen=True)
class RawCase:
    """Bytes written as they are, and the answers allowed: one of ``statuses`` with the one error
    body naming ``fragments``, or (when ``closed_ok``) the connection closed without an answer."""

    row: int
    name: str
    data: bytes
    statuses: tuple[int, ...]
    fragments: tuple[str, ...] = ()
    target: str = SHARED
    closed_ok: bool = False
    xfail: str | None = None

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"row{self.row:02d}-{self.name}"


def _head(extra: str, path: str = INFER, method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: turnout\r\nContent-Type: application/json\r\n"
        f"{extra}\r\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


CAP = str(SMALL_MAX_REQUEST_BYTES)
GZIP_BOMB = gzip.compress(_mlp_body() + b" " * (SMALL_MAX_REQUEST_BYTES * 16))
CLIENT_ERRORS = tuple(range(400, 500))

RAW_CASES = [
    # Row 1: an honest Content-Length over the cap: 413 before a byte of the body is read.
    RawCase(
        1,
        "content-length-1-gib-no-body-sent",
        _head(f"Content-Length: {1 << 30}\r\n"),
        (413,),
        (CAP,),
        SMALL,
    ),
    RawCase(
        1,
        "binary-extension-over-the-cap",
        (
            f"POST {INFER} HTTP/1.1\r\nHost: turnout\r\n"
            "Content-Type: application/octet-stream\r\nInference-Header-Content-Length: 10\r\n"
            f"Content-Length: {SMALL_MAX_REQUEST_BYTES + 1}\r\n\r\n"
        ).encode(),
        (413,),
        (CAP,),
        SMALL,
    ),
    # Row 2: no length, or a length the body overruns: bytes are counted as they stream.
    RawCase(
        2,
        "one-chunk-declared-larger-than-the-cap",
        _head("Transfer-Encoding: chunked\r\n")
        + b"10000\r\n"
        + b" " * (SMALL_MAX_REQUEST_BYTES + 2000),
        (413,),
        (CAP,),
        SMALL,
    ),
    RawCase(
        2,
        "one-byte-chunks-past-the-cap",
        _head("Transfer-Encoding: chunked\r\n") + _chunk(b" ") * (SMALL_MAX_REQUEST_BYTES + 100),
        (413,),
        (CAP,),
        SMALL,
    ),
    RawCase(
        2,
        "chunked-gzip-decompressing-past-the-cap",
        _head("Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n")
        + _chunk(GZIP_BOMB)
        + b"0\r\n\r\n",
        (413,),
        ("decompressed", CAP),
        SMALL,
    ),
    # Row 4: request lines and framing that are not HTTP, or not well-formed HTTP.
    *(
        RawCase(4, name, data, CLIENT_ERRORS, closed_ok=True)
        for name, data in (
            ("nul-bytes", b"\x00" * 64 + b"\r\n\r\n"),
            ("random-bytes", np.random.default_rng(4).bytes(512) + b"\r\n\r\n"),
            ("lower-case-method", b"get /v2 HTTP/1.1\r\nHost: t\r\n\r\n"),
            ("unknown-method", b"BREW /v2 HTTP/1.1\r\nHost: t\r\n\r\n"),
            ("bare-lf", b"GET /v2/health/live HTTP/1.1\nHost: t\n\n"),
            ("http-0.9", b"GET /\r\n\r\n"),
            ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ("ssh-banner", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
            ("header-without-colon", b"GET /v2 HTTP/1.1\r\nHost: t\r\nnot a header\r\n\r\n"),
            ("space-in-header-name", b"GET /v2 HTTP/1.1\r\nHo st: t\r\n\r\n"),
            ("bad-percent-escape", b"GET /v2/models/%ZZ/ready HTTP/1.1\r\nHost: t\r\n\r\n"),
            ("nul-in-path", b"GET /v2\x00/health HTTP/1.1\r\nHost: t\r\n\r\n"),
            ("path-of-3000-characters", b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
            ("options-asterisk", b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"),
            ("connect-authority", b"CONNECT example.com:443 HTTP/1.1\r\nHost: t\r\n\r\n"),
            ("two-content-lengths", _head("Content-Length: 2\r\nContent-Length: 3\r\n") + b"{}}"),
            (
                "chunked-and-content-length",
                _head("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n") + b"0\r\n\r\n",
            ),
            (
                "chunk-size-not-hex",
                _head("Transfer-Encoding: chunked\r\n") + b"zz\r\n{}\r\n0\r\n\r\n",
            ),
            (
                "chunk-size-overflows",
                _head("Transfer-Encoding: chunked\r\n") + b"f" * 24 + b"\r\n{}\r\n0\r\n\r\n",
            ),
            ("unknown-transfer-coding", _head("Transfer-Encoding: rot13\r\n")),
            ("content-length-negative", _head("Content-Length: -1\r\n")),
            ("content-length-with-plus", _head("Content-Length: +2\r\n") + b"{}"),
            ("content-length-of-30-digits", _head("Content-Length: " + "9" * 30 + "\r\n")),
            ("content-length-hex", _head("Content-Length: 0x10\r\n") + b"{}"),
        )
    ),
]


@pytest.mark.parametrize("case", _params(RAW_CASES))
def test_raw_http(request: pytest.FixtureRequest, case: RawCase) -> None:
    target = _target(request, case.target)
    try:
        reply = send_raw(target.process.http_url, case.data)
    except (ConnectionError, http.client.HTTPException):
        assert case.closed_ok, "closed without an answer"
    else:
        assert reply.status in case.statuses, reply
        check_http_error(reply, reply.status, case.fragments)
        if reply.status == 413:
            # The rest of the body is never read: the connection cannot carry another request.
            assert reply.headers.get("connection") == "close", reply
    assert_still_serving(target)


def _read_replies(sock: socket.socket, limit: int) -> list[Reply | None]:
    """Up to ``limit`` replies from one connection; None for a connection that ended."""
    replies: list[Reply | None] = []
    for _ in range(limit):
        try:
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            replies.append(
                Reply(
                    response.status,
                    {name.lower(): value for name, value in response.getheaders()},
                    response.read(),
                )
            )
        except (ConnectionError, http.client.HTTPException):
            replies.append(None)
            break
    return replies


@pytest.mark.parametrize(
    "declared",
    [
        pytest.param("whole-json-then-junk", id="row02-length-of-the-json-then-3x-the-cap-of-junk"),
        pytest.param("prefix", id="row02-length-of-10-bytes-then-the-whole-json"),
    ],
)
def test_content_length_smaller_than_what_is_sent(small: Served, declared: str) -> None:
    """The server reads exactly the declared bytes as the body: what follows is a next request
    (here not HTTP), refused or dropped with the connection. The body is never read past its
    length (no 413, no "content after the document"), and nothing is a 5xx."""
    rows = mlp_rows(1, seed=22)
    body = _encode(mlp_json_request(rows))
    if declared == "prefix":
        data = _head("Content-Length: 10\r\n") + body
    else:
        data = (
            _head(f"Content-Length: {len(body)}\r\n") + body + b"x" * (3 * SMALL_MAX_REQUEST_BYTES)
        )
    with socket.create_connection(("127.0.0.1", small.process.http_port), timeout=10) as sock:
        sock.sendall(data)
        replies = _read_replies(sock, 3)
    assert replies[-1] is None, "the connection must end after the junk"
    answered = [reply for reply in replies if reply is not None]
    assert answered, "no answer to the request that was sent whole"
    for reply in answered:
        assert reply.status < 500, reply
    first = answered[0]
    if first.status == 200:
        assert declared != "prefix", first
        outputs = {name: json_array(first, name) for name in ("OUTPUT0", "LABEL")}
        assert_mlp_outputs(outputs, mlp_reference(small.repository, "1", rows))
    else:
        message = check_http_error(first, 400)
        assert "after document" not in message, message
    for reply in answered[1:]:
        check_http_error(reply, 400)
    assert_still_serving(small)


def test_row01_over_the_cap_on_a_kept_alive_connection(small: Served) -> None:
    """A connection that has served a request already: the next one's honest Content-Length
    over the cap still gets 413 before its body, and the connection is then closed."""
    rows = mlp_rows(2, seed=11)
    body = _encode(mlp_json_request(rows))
    with socket.create_connection(("127.0.0.1", small.process.http_port), timeout=10) as sock:
        sock.sendall(_head(f"Content-Length: {len(body)}\r\n") + body)
        (served,) = _read_replies(sock, 1)
        assert served is not None
        outputs = {name: json_array(served, name) for name in ("OUTPUT0", "LABEL")}
        assert_mlp_outputs(outputs, mlp_reference(small.repository, "1", rows))
        sock.sendall(_head(f"Content-Length: {SMALL_MAX_REQUEST_BYTES * 100}\r\n"))
        refused, ended = _read_replies(sock, 2)
    assert refused is not None
    check_http_error(refused, 413, (CAP,))
    assert ended is None
    assert_still_serving(small)


def test_row01_memory_stays_flat_under_bodies_over_the_cap(small: Served) -> None:
    """Forty requests declaring a gigabyte each (the bodies are never sent): the resident memory
    of the process stays where it was, give or take what a few allocations move it."""
    before = scrape(small.process).value("process_resident_memory_bytes")
    for _ in range(40):
        reply = send_raw(small.process.http_url, _head(f"Content-Length: {1 << 30}\r\n"))
        check_http_error(reply, 413, (CAP,))
    after = scrape(small.process).value("process_resident_memory_bytes")
    assert before > 0
    assert after - before < 32 << 20, (before, after)
    assert_still_serving(small)


# --- row 4: every method on every route ----------------------------------------------------------

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND")
# Routes test_errors.py does not walk: the feedback, repository and admin routes, statistics,
# and paths that only look like the API's.
MORE_ROUTES = (
    "/v2/models/mlp/feedback",
    "/v2/repository/index",
    "/v2/repository/models/mlp/load",
    "/v2/repository/models/mlp/unload",
    "/admin/routes",
    "/admin/routes/mlp",
    "/admin/routes/mlp/promote",
    "/admin/audit",
    "/v2/models/stats",
    "/v2/models/mlp/versions/2/config",
    "/v2/models",
    "/v2/models/",
    "/v2//models//mlp//infer",
    "/v2/models/mlp/infer/",
    "/v2/models/mlp/infer?x=1&x=2",
    "/v2/models/%6dlp/infer",
    "/v2/health",
)


@pytest.mark.parametrize("target_name", [SHARED, GATEWAY], ids=["admin-off", "admin-on"])
@pytest.mark.parametrize("path", MORE_ROUTES, ids=[f"row04-{path}" for path in MORE_ROUTES])
def test_every_method_on_more_routes(
    request: pytest.FixtureRequest, target_name: str, path: str
) -> None:
    """Any method on any route: an answer below 500; errors have the one error body; with the
    admin API on, no admin route answers anything but 401 without the token."""
    target = _target(request, target_name)
    for method in METHODS:
        body = _mlp_body() if method in ("POST", "PUT", "PATCH") else None
        reply = send_http(target, method, path, body, JSON if body else {})
        assert reply.status < 500, (method, reply)
        if reply.status >= 400 and method != "HEAD":
            check_http_error(reply, reply.status)
        admin = path.startswith(("/admin", "/v2/repository"))
        if admin and target_name == GATEWAY and reply.status not in (404, 405):
            assert reply.status == 401, (method, reply)
    assert_still_serving(target)


def test_row04_unknown_grpc_methods(shared: Served) -> None:
    """A method or service the gRPC port does not have: UNIMPLEMENTED, and the port serves on."""
    with grpc.insecure_channel(shared.process.grpc_url) as channel:
        for method in ("/inference.GRPCInferenceService/ModelDelete", "/nope.Service/Nope", "/"):
            call = channel.unary_unary(method)
            error = grpc_failure(functools.partial(call, b"", timeout=10))
            assert error.code() == grpc.StatusCode.UNIMPLEMENTED, (method, error.details())
    assert_still_serving(shared)


def test_row04_http1_bytes_on_the_grpc_port(shared: Served) -> None:
    """An HTTP/1.1 request on the gRPC port: no HTTP answer, and both ports serve on."""
    with pytest.raises((ConnectionError, http.client.HTTPException, TimeoutError)):
        send_raw(shared.process.grpc_url, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n", 5)
    assert_still_serving(shared)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\xff\xff\xff\x0f not protobuf", id="row04-garbage"),
        pytest.param(
            pb.ModelInferRequest(
                model_name="mlp", inputs=[_good_grpc_tensor()]
            ).SerializeToString()[:-3],
            id="row04-truncated",
        ),
    ],
)
def test_row04_undecodable_grpc_payload(gateway: Gateway, payload: bytes) -> None:
    """Bytes that are not a ModelInferRequest are invalid input: INVALID_ARGUMENT with a clean
    message, and no traceback in the log (checked when this file's server stops)."""
    target = gateway.served
    with grpc.insecure_channel(target.process.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        error = grpc_failure(functools.partial(call, payload, timeout=10))
    assert_still_serving(target)
    check_grpc_error(error, grpc.StatusCode.INVALID_ARGUMENT)


def test_row04_undecodable_bytes_on_a_stream_end_it_after_the_answers_before_them(
    gateway: Gateway,
) -> None:
    target = gateway.served
    good = pb.ModelInferRequest(model_name="mlp", id="before", inputs=[_good_grpc_tensor()])
    with grpc.insecure_channel(target.process.grpc_url) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        answers = call(iter([good.SerializeToString(), b"\xff\xff\xff\xff\x0f"]), timeout=10)
        received = []
        with pytest.raises(grpc.RpcError) as ended:
            received.extend(answers)
    assert [answer.infer_response.id for answer in received] == ["before"]
    assert [answer.error_message for answer in received] == [""]
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ended.value.details() == "the request is not a valid protobuf message"
    assert_still_serving(target)


# --- row 12: unknown names leave no trace --------------------------------------------------------


def test_row12_unknown_names_create_no_metric_labels(shared: Served) -> None:
    names = ("ghost-e2e-bad", "MLP", "mlp-v3")
    for name in names:
        path = f"/v2/models/{name}/infer"
        check_http_error(send_http(shared, "POST", path, _mlp_body(), JSON), 404, (f"'{name}'",))
        message = pb.ModelInferRequest(model_name=name, inputs=[_good_grpc_tensor()])
        error = grpc_failure(functools.partial(shared.stub.ModelInfer, message, timeout=10))
        check_grpc_error(error, grpc.StatusCode.NOT_FOUND)
    for version in ("77", "0", "1.0"):
        path = f"/v2/models/mlp/versions/{version}/infer"
        check_http_error(send_http(shared, "POST", path, _mlp_body(), JSON), 404, (version,))
    metrics = scrape(shared.process)
    for name in names:
        assert f'"{name}"' not in metrics.text
    assert metrics.label_values("endpoint") <= {"_unknown", *REPOSITORY_MODELS}
    assert metrics.label_values("version") <= {"", "1", "2"}
    assert_still_serving(shared)


def test_row12_unknown_version_of_a_cached_model_makes_no_cache_entry(gateway: Gateway) -> None:
    target = gateway.served
    before = scrape(target.process)
    values = np.array([[3, 1, 4]], dtype=np.int64)
    reply = post_json(
        target.process.http_url, "/v2/models/cached/versions/9/infer", echo_body(values)
    )
    check_http_error(reply, 404, ("no version '9'",))
    error = grpc_failure(
        lambda: target.stub.ModelInfer(
            pb.ModelInferRequest(
                model_name="cached",
                model_version="9",
                inputs=[_raw_tensor("X", "INT64", (1, 3))],
                raw_input_contents=[values.tobytes()],
            ),
            timeout=10,
        )
    )
    check_grpc_error(error, grpc.StatusCode.NOT_FOUND, ("no version '9'",))
    after = scrape(target.process)
    for metric in ("turnout_cache_bytes", "turnout_cache_misses_total", "turnout_cache_hits_total"):
        assert series(after, metric, "cached") == series(before, metric, "cached"), metric
    assert "9" not in after.label_values("version")
    assert_still_serving(target)


# --- row 13: versions that failed to load ------------------------------------------------------


@pytest.mark.parametrize("model", BROKEN, ids=[f"row13-{model}" for model in BROKEN])
def test_row13_model_that_failed_to_load_is_503_and_others_serve(
    gateway: Gateway, model: str
) -> None:
    target = gateway.served
    reply = post_json(target.process.http_url, f"/v2/models/{model}/infer", {"inputs": []})
    check_http_error(reply, 503, (f"'{model}'",))
    path = f"/v2/models/{model}/versions/1/infer"
    pinned = post_json(target.process.http_url, path, {"inputs": []})
    check_http_error(pinned, 503, (f"'{model}'",))
    error = grpc_failure(
        lambda: target.stub.ModelInfer(pb.ModelInferRequest(model_name=model), timeout=10)
    )
    check_grpc_error(error, grpc.StatusCode.UNAVAILABLE, (f"'{model}'",))
    with pytest.raises(InferenceServerException) as caught:
        _via_http(model, lambda: [_http_input("X", np.ones((1, 2), np.float32), "FP32")])(target)
    check_client_error(caught.value, "503", (f"'{model}'",))
    assert target.process.get(f"/v2/models/{model}/ready")[0] == 503
    assert target.process.get("/v2/models/mlp/ready")[0] == 200
    assert_still_serving(target)


def test_row13_version_being_unloaded_is_503_and_the_others_serve(gateway: Gateway) -> None:
    """While version 2 drains its running request to be unloaded, new requests pinned to it are
    refused at once (UNAVAILABLE / 503) over gRPC and Triton's HTTP client; version 1 serves."""
    target = gateway.served
    admin = Admin(target.process)
    values = _echo_values(11, rows=2)
    pinned = pb.ModelInferRequest(
        model_name="unloading",
        model_version="2",
        inputs=[_raw_tensor("X", "INT64", values.shape)],
        raw_input_contents=[values.tobytes()],
    )
    with occupied(target, "unloading", CROWDED_STEPS, version="2"):
        unload = InThread(functools.partial(admin.unload, "unloading", "2"))
        until(lambda: admin.states("unloading").get("2") == "UNLOADING", "version 2 unloading")
        error = grpc_failure(functools.partial(target.stub.ModelInfer, pinned, timeout=10))
        check_grpc_error(error, grpc.StatusCode.UNAVAILABLE, ("version 2",))
        with pytest.raises(InferenceServerException) as caught:
            _via_http("unloading", lambda: [_http_input("X", values, "INT64")], version="2")(target)
        check_client_error(caught.value, "503", ("version 2",))
        routed = stub_echo(target.stub, "unloading", values)
        assert routed.values is not None, routed
        np.testing.assert_array_equal(routed.values, values)
        assert not unload.done(), "the unload waits for the running request"
    assert unload.result(PATIENT_S).status == 200
    gone = grpc_failure(functools.partial(target.stub.ModelInfer, pinned, timeout=10))
    check_grpc_error(gone, grpc.StatusCode.NOT_FOUND, ("version '2'",))
    assert_still_serving(target)


@pytest.mark.parametrize("model", BROKEN, ids=[f"row13-{model}" for model in BROKEN])
def test_row13_failed_load_message_names_no_internal_class(gateway: Gateway, model: str) -> None:
    reply = post_json(gateway.served.process.http_url, f"/v2/models/{model}/infer", {"inputs": []})
    message = check_http_error(reply, 503, (f"'{model}'",))
    for internal in ("InvalidProtobuf", "InvalidArgument", "UnsupportedModel"):
        assert internal not in message, message


# --- row 14: ONNX Runtime failing at run time for the model's own reasons ---------------------


@pytest.mark.xfail(
    reason="KNOWN LIMITATION: ONNX Runtime raises the same errors for a model's own fault as for "
    "inputs it cannot run on, so a model that fails whatever the input holds is answered 400 "
    "'could not run on this input' rather than 500 (with warmup on, it fails to load instead)",
    strict=True,
)
def test_row14_model_fault_at_run_time_is_500(gateway: Gateway) -> None:
    target = gateway.served
    body = {"inputs": [_tensor("X", "FP32", (1, 2), [1.0, 2.0])]}
    reply = post_json(target.process.http_url, "/v2/models/fails/infer", body)
    assert reply.status in (400, 500), reply
    assert_still_serving(target)
    check_http_error(reply, 500, ("request id",))


def test_row14_model_fault_leaks_nothing(gateway: Gateway) -> None:
    """Whatever status it gets today, ONNX Runtime's own text (source paths, node names,
    'SafeIntOnOverflow') never reaches the client, over either protocol."""
    target = gateway.served
    body = {"inputs": [_tensor("X", "FP32", (2, 2), [1.0, 2.0, 3.0, 4.0])]}
    reply = post_json(target.process.http_url, "/v2/models/fails/infer", body)
    assert reply.status in (400, 500), reply
    message = check_http_error(reply, reply.status)
    assert "Overflow" not in message
    error = grpc_failure(
        lambda: target.stub.ModelInfer(
            pb.ModelInferRequest(
                model_name="fails", inputs=[_typed("X", "FP32", (1, 2), fp32_contents=[1.0, 2.0])]
            ),
            timeout=10,
        )
    )
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    assert "Overflow" not in check_grpc_error(error, error.code())
    assert_still_serving(target)


# --- the slow models of the gateway ------------------------------------------------------------


class Stream:
    """One ModelStreamInfer call of Turnout's stub, fed from a queue."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, timeout_s: float = 30.0) -> None:
        self._requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
        self.call = stub.ModelStreamInfer(iter(self._requests.get, None), timeout=timeout_s)

    def send(self, message: pb.ModelInferRequest) -> None:
        """Send one request on the stream."""
        self._requests.put(message)

    def receive(self) -> pb.ModelStreamInferResponse:
        """The next answer on the stream."""
        answer: pb.ModelStreamInferResponse = next(self.call)
        return answer

    def end_requests(self) -> None:
        """Send no more requests (the server then ends the stream once it has answered)."""
        self._requests.put(None)

    def close(self) -> None:
        """End the requests and read the stream to its end."""
        self.end_requests()
        for _ in self.call:
            pass


def _echo_values(start: int, rows: int = 1, width: int = 1) -> np.ndarray:
    """Distinct small INT64 values (a handful of loop steps)."""
    return np.arange(start, start + rows * width, dtype=np.int64).reshape(rows, width)


def occupied(target: Served, model: str, steps: int = BUSY_STEPS, version: str = "1") -> Busy:
    """Keeps the only instance of ``model`` (version ``version``, pinned) running one slow echo
    request of ``steps`` loop steps while the ``with`` block lasts, waiting up to PATIENT_S."""
    return busy_echo(target.process, model, steps, version, PATIENT_S)


def _stream_outcome(answer: pb.ModelStreamInferResponse) -> Outcome:
    if answer.error_message:
        return Outcome("STREAM_ERROR", answer.error_message)
    return Outcome("OK", values=raw_outputs(answer.infer_response)["Y"])


# --- row 15: a full queue ----------------------------------------------------------------------


def _refuse_raw_http(target: Served, values: np.ndarray) -> Outcome:
    return http_echo(target.process, "bounded", values)


def _refuse_stub(target: Served, values: np.ndarray) -> Outcome:
    return stub_echo(target.stub, "bounded", values)


def _refuse_triton_http(target: Served, values: np.ndarray) -> Outcome:
    return triton_http_echo(target.process, "bounded", values)


def _refuse_triton_grpc(target: Served, values: np.ndarray) -> Outcome:
    return triton_grpc_echo(target.process, "bounded", values)


def _refuse_stream(target: Served, values: np.ndarray) -> Outcome:
    stream = Stream(target.stub)
    try:
        stream.send(echo_message("bounded", values, request_id="overflow"))
        answer = stream.receive()
        assert answer.infer_response.id == "overflow", answer
        return _stream_outcome(answer)
    finally:
        stream.close()


OVERFLOW = {
    "raw-http": (_refuse_raw_http, "503"),
    "grpc-stub": (_refuse_stub, "RESOURCE_EXHAUSTED"),
    "triton-http": (_refuse_triton_http, "503"),
    "triton-grpc": (_refuse_triton_grpc, "RESOURCE_EXHAUSTED"),
    "grpc-stream": (_refuse_stream, "STREAM_ERROR"),
}


@pytest.mark.parametrize("client", list(OVERFLOW), ids=[f"row15-{c}" for c in OVERFLOW])
def test_row15_queue_full_refuses_exactly_the_overflow(gateway: Gateway, client: str) -> None:
    """One request runs, two of several rows wait (the queue holds two), the next is refused at
    once while they still wait; then the two run together and each gets its own rows."""
    target = gateway.served
    send, code = OVERFLOW[client]
    before = executions_by_batch_size(target.process, "bounded")
    queued_values = [_echo_values(100, rows=3), _echo_values(200, rows=2)]
    with occupied(target, "bounded", CROWDED_STEPS):
        queued = [
            InThread(functools.partial(patient_echo, target.process, "bounded", queued_values[0])),
            InThread(functools.partial(stub_echo, target.stub, "bounded", queued_values[1])),
        ]
        until(lambda: queue_depth(target.process, "bounded") == BOUNDED_QUEUE, "queue full")
        refused = send(target, _echo_values(300))
        assert queue_depth(target.process, "bounded") == BOUNDED_QUEUE, "refused at once"
    assert refused.code == code, refused
    assert refused.values is None
    assert "queue is full" in check_message(refused.message), refused
    if client == "raw-http":
        assert int(refused.headers["retry-after"]) >= 1, refused
    for values, call in zip(queued_values, queued, strict=True):
        outcome = call.result(PATIENT_S)
        assert outcome.values is not None, outcome
        np.testing.assert_array_equal(outcome.values, values)
    # The slow request, and the two queued ones in one run of five rows; the refusal never ran.
    assert grown(before, executions_by_batch_size(target.process, "bounded")) == {1: 1, 5: 1}
    assert_still_serving(target)


# --- row 17: a request that waits longer than its budget ------------------------------------


def _deadline_stream(target: Served, values: np.ndarray) -> Outcome:
    """On one stream: a request with a 50 ms budget (refused while it waits) then, on the same
    stream, a request without one, which is answered once the instance is free."""
    stream = Stream(target.stub)
    try:
        stream.send(
            echo_message(
                "deadline",
                values,
                request_id="late",
                parameters={"timeout": pb.InferParameter(int64_param=50_000)},
            )
        )
        late = stream.receive()
        assert late.infer_response.id == "late", late
        patient = values + 1
        stream.send(echo_message("deadline", patient, request_id="patient"))
        answer = stream.receive()
        assert answer.infer_response.id == "patient", answer
        assert not answer.error_message, answer
        np.testing.assert_array_equal(raw_outputs(answer.infer_response)["Y"], patient)
        return _stream_outcome(late)
    finally:
        stream.close()


def _deadline_binary_http(target: Served, values: np.ndarray) -> Outcome:
    header = {
        "parameters": {"timeout": 50_000},
        "inputs": [
            {
                "name": "X",
                "datatype": "INT64",
                "shape": list(values.shape),
                "parameters": {"binary_data_size": values.nbytes},
            }
        ],
    }
    body, headers = _binary(header, values.astype("<i8").tobytes())
    reply = request(target.process.http_url, "POST", "/v2/models/deadline/infer", body, headers)
    return Outcome(str(reply.status), reply.error() if reply.status != 200 else "")


def _deadline_typed_grpc(target: Served, values: np.ndarray) -> Outcome:
    message = pb.ModelInferRequest(
        model_name="deadline",
        inputs=[_typed("X", "INT64", values.shape, int64_contents=values.reshape(-1).tolist())],
        parameters={"timeout": pb.InferParameter(int64_param=50_000)},
    )
    try:
        target.stub.ModelInfer(message, timeout=30)
    except grpc.RpcError as error:
        return Outcome(error.code().name, error.details() or "")
    return Outcome("OK")


LATE = {
    "grpc-stream-timeout-parameter": (_deadline_stream, "STREAM_ERROR", 2),
    "http-binary-timeout-parameter": (_deadline_binary_http, "504", 1),
    "grpc-typed-timeout-parameter": (_deadline_typed_grpc, "DEADLINE_EXCEEDED", 1),
}


@pytest.mark.parametrize("sender", list(LATE), ids=[f"row17-{s}" for s in LATE])
def test_row17_request_past_its_budget_is_refused_and_never_runs(
    gateway: Gateway, sender: str
) -> None:
    target = gateway.served
    send, code, runs = LATE[sender]
    before = executions_by_batch_size(target.process, "deadline")
    expired = series(scrape(target.process), "turnout_queue_expired_total", "deadline")
    with occupied(target, "deadline"):
        call = InThread(functools.partial(send, target, _echo_values(40)))
        if sender != "grpc-stream-timeout-parameter":
            call.result(PATIENT_S)  # refused while the slow request still runs
    late = call.result(PATIENT_S)
    assert late.code == code, late
    assert "deadline" in check_message(late.message), late
    after = series(scrape(target.process), "turnout_queue_expired_total", "deadline")
    assert after == expired + 1
    # Only the slow request ran (and the stream's patient request, alone, afterwards).
    assert grown(before, executions_by_batch_size(target.process, "deadline")) == {1: runs}
    assert_still_serving(target)


# --- row 18: the client's gRPC deadline --------------------------------------------------------


def _given_up(metrics: Scrape, model: str, protocol: str = "grpc") -> float:
    labels = {"endpoint": model, "version": "1", "protocol": protocol}
    return sum(
        metrics.value("turnout_requests_total", status=status, **labels)
        for status in ("deadline_exceeded", "cancelled")
    )


def test_row18_client_deadline_shorter_than_the_run(gateway: Gateway) -> None:
    """The deadline passes while the request runs: the client sees DEADLINE_EXCEEDED, the run
    finishes (it had started), the worker is free again at once, and the request is counted
    once, as given up."""
    target = gateway.served
    before = scrape(target.process)
    executed = model_stats(target.process, "deadline")["execution_count"]
    started = launched(target.process, "deadline")
    outcome = InThread(
        functools.partial(
            triton_grpc_echo, target.process, "deadline", np.array([[BUSY_STEPS]]), None, 0.5
        )
    )
    until(lambda: launched(target.process, "deadline") == started + 1, "the request running")
    assert outcome.result(PATIENT_S).code == "DEADLINE_EXCEEDED"
    until(
        lambda: model_stats(target.process, "deadline")["execution_count"] == executed + 1,
        "the run to finish",
    )
    until(
        lambda: scrape(target.process).value("turnout_inflight_requests", protocol="grpc") == 0,
        "no gRPC request in flight",
    )
    after = scrape(target.process)
    assert _given_up(after, "deadline") == _given_up(before, "deadline") + 1
    success = {"endpoint": "deadline", "version": "1", "protocol": "grpc", "status": "success"}
    assert after.value("turnout_requests_total", **success) == before.value(
        "turnout_requests_total", **success
    )
    values = _echo_values(60, rows=2)
    assert stub_echo(target.stub, "deadline", values).values is not None
    assert_still_serving(target)


def _dropped(target: Served) -> float:
    """Requests of ``deadline`` dropped from its queue so far: expired or abandoned."""
    metrics = scrape(target.process)
    return sum(
        series(metrics, counter, "deadline")
        for counter in ("turnout_queue_expired_total", "turnout_queue_abandoned_total")
    )


def test_row18_stream_deadline_while_queued_drops_the_request(gateway: Gateway) -> None:
    """The stream's deadline passes while its request waits: the request is dropped (never
    runs) and the client is told the deadline passed."""
    target = gateway.served
    before = executions_by_batch_size(target.process, "deadline")
    dropped = _dropped(target)
    with occupied(target, "deadline"):
        stream = Stream(target.stub, timeout_s=0.3)
        stream.send(echo_message("deadline", _echo_values(70), request_id="queued"))
        # The server drops the request at the stream's deadline and may say so on the stream
        # just before gRPC ends it: either way the client learns that the deadline passed.
        answer: pb.ModelStreamInferResponse | None = None
        code = grpc.StatusCode.OK
        try:
            answer = stream.receive()
        except grpc.RpcError as error:
            code = error.code()
        finally:
            stream.end_requests()
        if answer is None:
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, code
        else:
            assert answer.infer_response.id == "queued", answer
            assert "deadline" in check_message(answer.error_message), answer
        until(lambda: _dropped(target) == dropped + 1, "the queued request dropped")
    assert grown(before, executions_by_batch_size(target.process, "deadline")) == {1: 1}
    assert_still_serving(target)


# --- row 19: the client goes away while its request runs ------------------------------------


def _leave_http(target: Served, values: np.ndarray) -> Callable[[], None]:
    body = _encode(echo_body(values))
    sock = socket.create_connection(("127.0.0.1", target.process.http_port), timeout=10)
    sock.sendall(_head(f"Content-Length: {len(body)}\r\n", "/v2/models/deadline/infer") + body)
    return sock.close


def _leave_grpc(target: Served, values: np.ndarray) -> Callable[[], None]:
    channel = grpc.insecure_channel(target.process.grpc_url)
    future = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(
        echo_message("deadline", values), timeout=30
    )

    def cancel() -> None:
        future.cancel()
        channel.close()

    return cancel


def _leave_stream(target: Served, values: np.ndarray) -> Callable[[], None]:
    channel = grpc.insecure_channel(target.process.grpc_url)
    stream = Stream(pb_grpc.GRPCInferenceServiceStub(channel))
    stream.send(echo_message("deadline", values, request_id="leaving"))

    def cancel() -> None:
        stream.call.cancel()
        stream.end_requests()
        channel.close()

    return cancel


LEAVERS = {
    "http-connection-closed": (_leave_http, "http"),
    "grpc-call-cancelled": (_leave_grpc, "grpc"),
    "grpc-stream-cancelled": (_leave_stream, "grpc"),
}


@pytest.mark.parametrize("leaver", list(LEAVERS), ids=[f"row19-{name}" for name in LEAVERS])
def test_row19_client_gone_during_the_run(gateway: Gateway, leaver: str) -> None:
    """The run finishes (it had started), its result is dropped, the request leaves the in-flight
    count and is counted once, as cancelled; the worker takes the next request."""
    target = gateway.served
    leave, protocol = LEAVERS[leaver]
    before = scrape(target.process)
    executed = model_stats(target.process, "deadline")["execution_count"]
    started = launched(target.process, "deadline")
    hang_up = leave(target, np.array([[BUSY_STEPS]]))
    until(lambda: launched(target.process, "deadline") == started + 1, "the request running")
    hang_up()
    until(
        lambda: model_stats(target.process, "deadline")["execution_count"] == executed + 1,
        "the run to finish",
    )
    until(
        lambda: scrape(target.process).value("turnout_inflight_requests", protocol=protocol) == 0,
        "nothing in flight",
    )

    def counted(metrics: Scrape, status: str) -> float:
        labels = {"endpoint": "deadline", "version": "1", "protocol": protocol}
        return metrics.value("turnout_requests_total", status=status, **labels)

    until(
        lambda: counted(scrape(target.process), "cancelled") == counted(before, "cancelled") + 1,
        "the request counted as cancelled",
    )
    after = scrape(target.process)
    for status in ("success", "internal_error", "deadline_exceeded"):
        assert counted(after, status) == counted(before, status), status
    assert series(after, "turnout_queue_depth", "deadline") == 0
    values = _echo_values(90, rows=3)
    assert http_echo(target.process, "deadline", values).values is not None
    assert_still_serving(target)


# --- row 20: concurrent requests of different shapes at the batcher ----------------------------


def _echo_sender(kind: str) -> Callable[[Served, str, np.ndarray], np.ndarray | None]:
    def send(target: Served, model: str, values: np.ndarray) -> np.ndarray | None:
        if kind == "http":
            return http_echo(target.process, model, values).values
        if kind == "stub":
            return stub_echo(target.stub, model, values).values
        if kind == "triton-http":
            return triton_http_echo(target.process, model, values).values
        return triton_grpc_echo(target.process, model, values).values

    return send


def _text_body(texts: Sequence[str]) -> dict[str, Any]:
    return {
        "inputs": [
            _tensor("DELAY", "INT64", (len(texts), 1), [0] * len(texts)),
            _tensor("TEXT", "BYTES", (len(texts),), list(texts)),
        ]
    }


def test_row20_burst_of_mixed_shapes_each_gets_its_own_rows(gateway: Gateway) -> None:
    """Forty requests at once, widths 1-4 and 1-5 rows, over four clients: every caller gets
    exactly its own rows back, never another's, never empty."""
    target = gateway.served
    rng = np.random.default_rng(20)
    kinds = ("http", "stub", "triton-http", "triton-grpc")
    jobs = []
    for index in range(40):
        rows, width = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        values = _echo_values(1000 * (index + 1), rows, width)
        jobs.append((_echo_sender(kinds[index % len(kinds)]), values))
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda job: job[0](target, "widths", job[1]), jobs))
    for (_, values), answer in zip(jobs, answers, strict=True):
        assert answer is not None
        assert answer.shape == values.shape
        np.testing.assert_array_equal(answer, values)
    assert_still_serving(target)


def test_row20_burst_of_strings_of_every_length(gateway: Gateway) -> None:
    target = gateway.served
    texts = [
        [f"{index}:" + "x" * (index * 37 % 300), "", "naïve 数据 🙂"][: 1 + index % 3]
        for index in range(24)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(
            pool.map(
                lambda group: post_json(
                    target.process.http_url, "/v2/models/text/infer", _text_body(group)
                ),
                texts,
            )
        )
    for group, reply in zip(texts, replies, strict=True):
        assert reply.status == 200, reply
        outputs = {output["name"]: output for output in reply.json()["outputs"]}
        assert outputs["ECHO"]["data"] == group
        assert outputs["ECHO"]["shape"] == [len(group)]
    assert_still_serving(target)


# --- row 21: a run that answers the wrong number of rows ---------------------------------------


def _internal_http(target: Served, model: str, values: np.ndarray) -> str:
    reply = patient_post(target.process, f"/v2/models/{model}/infer", echo_body(values))
    return check_http_error(reply, 500, ("request id",))


def _internal_stub(target: Served, model: str, values: np.ndarray) -> str:
    error = grpc_failure(lambda: target.stub.ModelInfer(echo_message(model, values), timeout=30))
    return check_grpc_error(error, grpc.StatusCode.INTERNAL, ("request id",))


def _internal_triton_grpc(target: Served, model: str, values: np.ndarray) -> str:
    outcome = triton_grpc_echo(target.process, model, values)
    assert outcome.code == "INTERNAL", outcome
    assert outcome.values is None
    return check_message(outcome.message)


def _request_id(message: str) -> str:
    return message.rsplit(" ", 1)[-1]


def _assert_logged(target: Served, messages: Sequence[str]) -> None:
    logs = target.process.logs()
    for message in messages:
        assert f"request {_request_id(message)} failed" in logs, message


def test_row21_every_member_of_a_misaligned_batch_gets_500(gateway: Gateway) -> None:
    """Three one-row requests queue behind a slow one and run as one batch of three rows, which
    the model answers with one row: each of the three fails (500 / INTERNAL with a request id
    the log has), none gets another's or a shared row."""
    target = gateway.served
    before = executions_by_batch_size(target.process, "collapsed")
    senders = (_internal_http, _internal_stub, _internal_triton_grpc)
    with occupied(target, "collapsed", CROWDED_STEPS):
        calls = [
            InThread(functools.partial(send, target, "collapsed", _echo_values(10 * (index + 1))))
            for index, send in enumerate(senders)
        ]
        until(lambda: queue_depth(target.process, "collapsed") == len(senders), "queued")
    messages = [call.result(PATIENT_S) for call in calls]
    assert len({_request_id(message) for message in messages}) == len(messages)
    _assert_logged(target, messages)
    # Only the slow request succeeded (a failed run is not in the statistics); each of the three
    # alone would have been answered (as below), so they failed together, as one run.
    assert grown(before, executions_by_batch_size(target.process, "collapsed")) == {1: 1}
    # Alone, one row is one row: correctly aligned, answered.
    alone = _echo_values(5, rows=1, width=3)
    np.testing.assert_array_equal(http_echo(target.process, "collapsed", alone).values, alone)
    assert_still_serving(target)


@pytest.mark.parametrize(
    ("model", "rows", "send"),
    [
        pytest.param("collapsed", 2, _internal_http, id="row21-two-rows-answered-with-one-http"),
        pytest.param("collapsed", 4, _internal_stub, id="row21-four-rows-answered-with-one-grpc"),
        pytest.param("doubled", 1, _internal_http, id="row21-one-row-answered-with-two-http"),
        pytest.param(
            "doubled", 3, _internal_triton_grpc, id="row21-three-rows-answered-with-six-grpc"
        ),
    ],
)
def test_row21_wrong_rows_for_one_request(
    gateway: Gateway, model: str, rows: int, send: Callable[[Served, str, np.ndarray], str]
) -> None:
    target = gateway.served
    message = send(target, model, _echo_values(7, rows=rows, width=2))
    _assert_logged(target, [message])
    assert_still_serving(target)


# --- row 27: one model of several fails to load at start ------------------------------------


@pytest.mark.parametrize("model", BROKEN, ids=[f"row27-{model}" for model in BROKEN])
def test_row27_failed_model_is_named_and_the_others_serve(gateway: Gateway, model: str) -> None:
    target = gateway.served
    lines = [line for line in gateway.startup_logs.splitlines() if f"'{model}'" in line]
    failures = [line for line in lines if "failed to load" in line]
    assert failures, gateway.startup_logs
    assert "ERROR" in failures[0]
    assert "Traceback" not in gateway.startup_logs
    # Readiness policy (README): not ready while any configured version failed; live; the
    # healthy models ready and serving.
    assert target.process.get("/v2/health/live")[0] == 200
    assert target.process.get("/v2/health/ready")[0] == 503
    assert not target.stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert not target.stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=10).ready
    assert target.stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=10).ready
    metrics = scrape(target.process)
    assert metrics.value("turnout_model_ready", endpoint=model, version="1") == 0
    assert metrics.value("turnout_model_ready", endpoint="mlp", version="2") == 1
    assert_still_serving(target)


# --- row 30: invalid route changes -------------------------------------------------------------


@dataclass(frozen=True)
class RouteCase:
    """A refused PUT of ``ab``'s route and the field path its message must name."""

    name: str
    route: Any
    names: tuple[str, ...]
    xfail: str | None = None

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"row30-{self.name}"


ROUTE_CASES = [
    RouteCase("weights-as-a-list", {"policy": "canary", "weights": [90, 10]}, ("weights",)),
    RouteCase(
        "weight-true",
        {"policy": "canary", "weights": {"1": True, "2": 10}},
        ("weights",),
    ),
    RouteCase(
        "weight-as-text",
        {"policy": "canary", "weights": {"1": "90", "2": 10}},
        ("weights",),
    ),
    RouteCase(
        "tiny-negative-weight", {"policy": "canary", "weights": {"1": -1e-9, "2": 10}}, ("weights",)
    ),
    RouteCase(
        "all-zero-floats", {"policy": "canary", "weights": {"1": 0.0, "2": 0.0}}, ("weights",)
    ),
    RouteCase(
        "one-version-only",
        {"policy": "canary", "weights": {"2": 100}},
        ("weights",),
    ),
    RouteCase("no-weights-at-all", {"policy": "canary", "weights": {}}, ("weights",)),
    RouteCase(
        "unknown-staged-version",
        {"policy": "blue_green", "live": "1", "staged": "9"},
        ("staged", "'9'"),
    ),
    RouteCase(
        "unknown-bandit-arm",
        {"policy": "bandit", "arms": ["1", "9"]},
        ("arms", "'9'"),
    ),
    RouteCase(
        "unknown-rollout-canary",
        {"policy": "rollout", "stable": "1", "canary": "9"},
        ("canary", "'9'"),
    ),
    RouteCase(
        "shadow-rate-just-above-1",
        {"policy": "latest", "shadow": {"version": "1", "rate": 1.0000001}},
        ("shadow.rate",),
    ),
    RouteCase(
        "shadow-rate-as-text",
        {"policy": "latest", "shadow": {"version": "1", "rate": "0.5"}},
        ("shadow.rate",),
    ),
    RouteCase(
        "shadow-rate-true",
        {"policy": "latest", "shadow": {"version": "1", "rate": True}},
        ("shadow.rate",),
    ),
    RouteCase(
        "shadow-of-an-unknown-version",
        {"policy": "fixed", "version": "1", "shadow": {"version": "10", "rate": 0.5}},
        ("shadow.version", "'10'"),
    ),
]


@pytest.fixture
def ab_baseline(gateway: Gateway) -> Admin:
    """``ab`` on its baseline canary (restored if an earlier case changed it)."""
    admin = Admin(gateway.served.process)
    if admin.route("ab")["route"] != AB_BASELINE:
        admin.set_route("ab", AB_BASELINE)
    return admin


def _route_state(gateway: Gateway, admin: Admin) -> tuple[Any, ...]:
    files = {
        path.name: path.read_bytes()
        for path in sorted(gateway.state_dir.iterdir())
        if path.is_file() and not path.name.startswith(".")
    }
    return admin.route("ab")["route"], admin.audit(), admin.index(), files


@pytest.mark.parametrize("case", _params(ROUTE_CASES))
def test_row30_invalid_route_is_refused_with_the_field_and_changes_nothing(
    gateway: Gateway, ab_baseline: Admin, case: RouteCase
) -> None:
    admin = ab_baseline
    before = _route_state(gateway, admin)
    assert before[0] == AB_BASELINE
    reply = admin.call("PUT", "/admin/routes/ab", case.route)
    check_http_error(reply, 400, case.names)
    assert _route_state(gateway, admin) == before
    assert_still_serving(gateway.served)


# --- row 31: failed inference is never cached -------------------------------------------------


def _cache(target: Served, model: str) -> tuple[float, float, float]:
    metrics = scrape(target.process)
    return (
        series(metrics, "turnout_cache_hits_total", model),
        series(metrics, "turnout_cache_misses_total", model),
        series(metrics, "turnout_cache_bytes", model),
    )


def _deadline_then_again(target: Served) -> None:
    values = _echo_values(500, rows=2)
    # The slow request's own value differs per scenario: a cached one would not keep it busy.
    with occupied(target, "cached", BUSY_STEPS + 1):
        late = http_echo(target.process, "cached", values, timeout_us=50_000)
    assert late.code == "504", late
    hits = _cache(target, "cached")[0]
    again = http_echo(target.process, "cached", values)
    assert again.values is not None, again
    np.testing.assert_array_equal(again.values, values)
    assert _cache(target, "cached")[0] == hits, "the 504 was not answered from the cache"
    third = stub_echo(target.stub, "cached", values)
    assert third.values is not None, third
    np.testing.assert_array_equal(third.values, values)
    assert _cache(target, "cached")[0] == hits + 1, "the success is cached"


def _overload_then_again(target: Served) -> None:
    waiting, refused_values = _echo_values(600), _echo_values(700, rows=3)
    with occupied(target, "cached", CROWDED_STEPS + 2):
        queued = InThread(functools.partial(patient_echo, target.process, "cached", waiting))
        until(lambda: queue_depth(target.process, "cached") == CACHED_QUEUE, "queue full")
        refused = stub_echo(target.stub, "cached", refused_values)
    assert refused.code == "RESOURCE_EXHAUSTED", refused
    assert queued.result(PATIENT_S).values is not None
    hits = _cache(target, "cached")[0]
    again = stub_echo(target.stub, "cached", refused_values)
    assert again.values is not None, again
    np.testing.assert_array_equal(again.values, refused_values)
    assert _cache(target, "cached")[0] == hits


def _gather_body(index: Sequence[int], datatype: str = "INT64") -> dict[str, Any]:
    return {"inputs": [_tensor("INDEX", datatype, (len(index),), list(index))]}


def _runtime_400_twice(target: Served) -> None:
    before = _cache(target, "cached_gather")
    for _ in range(3):
        reply = post_json(
            target.process.http_url, "/v2/models/cached_gather/infer", _gather_body([1, 7])
        )
        check_http_error(reply, 400, ("cached_gather",))
    hits, _, size = _cache(target, "cached_gather")
    assert (hits, size) == (before[0], before[2])
    good = post_json(
        target.process.http_url, "/v2/models/cached_gather/infer", _gather_body([2, 0])
    )
    np.testing.assert_array_equal(json_array(good, "ROW"), [[4.0, 5.0], [0.0, 1.0]])


def _invalid_twice(target: Served) -> None:
    before = _cache(target, "cached_gather")
    for _ in range(3):
        reply = post_json(
            target.process.http_url, "/v2/models/cached_gather/infer", _gather_body([1], "INT32")
        )
        check_http_error(reply, 400, ("expected datatype INT64, got INT32",))
    assert _cache(target, "cached_gather") == before


REPEATED = {
    "deadline-504-then-the-same-request": _deadline_then_again,
    "overload-503-then-the-same-request": _overload_then_again,
    "onnxruntime-400-three-times": _runtime_400_twice,
    "invalid-input-400-three-times": _invalid_twice,
}


@pytest.mark.parametrize("scenario", list(REPEATED), ids=[f"row31-{s}" for s in REPEATED])
def test_row31_errors_are_never_cached(gateway: Gateway, scenario: str) -> None:
    REPEATED[scenario](gateway.served)
    assert_still_serving(gateway.served)


# --- row 33: admin calls without the right token ---------------------------------------------

TOKEN = "e2e-admin-token"
WRONG_CREDENTIALS = {
    "token-in-the-query": ({}, f"?token={TOKEN}"),
    "token-in-a-cookie": ({"Cookie": f"token={TOKEN}"}, ""),
    "token-in-another-header": ({"X-Admin-Token": TOKEN}, ""),
    "token-scheme": ({"Authorization": f"Token {TOKEN}"}, ""),
    "bearer-twice": ({"Authorization": f"Bearer Bearer {TOKEN}"}, ""),
    "bearer-of-spaces": ({"Authorization": "Bearer     "}, ""),
    "non-ascii-token": ({"Authorization": "Bearer t\u00f6ken"}, ""),
}
ADMIN_CALLS = {
    "list": ("GET", "/admin/routes", None),
    "set": ("PUT", "/admin/routes/ab", {"policy": "fixed", "version": "1"}),
    "audit": ("GET", "/admin/audit", None),
    "unload": ("POST", "/v2/repository/models/ab/unload", {"parameters": {"version": "2"}}),
}


@pytest.mark.parametrize("call", list(ADMIN_CALLS))
@pytest.mark.parametrize(
    "credentials", list(WRONG_CREDENTIALS), ids=[f"row33-{c}" for c in WRONG_CREDENTIALS]
)
def test_row33_admin_without_the_right_token_is_401_with_no_data(
    gateway: Gateway, ab_baseline: Admin, credentials: str, call: str
) -> None:
    admin = ab_baseline
    before = _route_state(gateway, admin)
    headers, query = WRONG_CREDENTIALS[credentials]
    method, path, document = ADMIN_CALLS[call]
    body = None if document is None else _encode(document)
    reply = send_http(gateway.served, method, path + query, body, {**JSON, **headers})
    check_http_error(reply, 401)
    assert reply.headers.get("www-authenticate", "").lower().startswith("bearer"), reply
    for data in (b"policy", b"weights", b"entries", b"READY"):
        assert data not in reply.body, reply
    assert _route_state(gateway, admin) == before
    assert_still_serving(gateway.served)


@pytest.mark.parametrize("path", ["/admin/routes", "/admin/audit", "/v2/repository/index"])
def test_row33_admin_api_is_off_without_a_configured_token(shared: Served, path: str) -> None:
    """The shared server has no token: whatever credentials come, the paths do not exist."""
    for method in ("GET", "POST"):
        reply = send_http(shared, method, f"{path}?token={TOKEN}", None, bearer(TOKEN))
        assert reply.status in (404, 405), reply
        check_http_error(reply, reply.status)
        assert b"policy" not in reply.body
    assert_still_serving(shared)


# --- row 34: paths and URLs sent to the admin and repository API -----------------------------


@dataclass(frozen=True)
class PathCase:
    """A repository or admin call carrying a path or URL, and the status that refuses it."""

    name: str
    path: str
    document: Any
    status: int

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"row34-{self.name}"


def _load(model: str, **parameters: Any) -> tuple[str, Any]:
    return f"/v2/repository/models/{model}/load", {"parameters": parameters}


PATH_CASES = [
    PathCase("file-url-as-version", *_load("mlp", version="file:///etc/passwd"), 400),
    PathCase("http-url-as-version", *_load("mlp", version="http://example.com/m.onnx"), 400),
    PathCase("encoded-dotdot-version", *_load("mlp", version="..%2F..%2Fx"), 400),
    PathCase("backslash-dotdot-model", *_load("..\\..\\etc", version="1"), 400),
    PathCase("full-width-dots-model", *_load("%EF%BC%8E%EF%BC%8E", version="1"), 400),
    PathCase("nul-in-model", *_load("mlp%00", version="1"), 400),
    PathCase("encoded-slash-in-model", *_load("mlp%2F..%2F..", version="1"), 404),
    PathCase("encoded-absolute-model", *_load("%2Fetc", version="1"), 404),
    PathCase(
        "file-override-parameter",
        *_load("mlp", version="3", **{"file:3/model.onnx": "aGVsbG8="}),
        404,
    ),
    PathCase(
        "config-override-parameter",
        *_load("mlp", version="3", config=json.dumps({"path": "/etc/passwd"})),
        404,
    ),
    PathCase("path-parameter", *_load("mlp", version="3", path="/etc/passwd"), 404),
    PathCase(
        "path-field-in-a-route",
        "/admin/routes/ab",
        {"policy": "fixed", "version": "1", "path": "/etc/passwd"},
        400,
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in PATH_CASES])
def test_row34_paths_outside_the_model_root_are_refused(
    gateway: Gateway, ab_baseline: Admin, case: PathCase
) -> None:
    admin = ab_baseline
    before = _route_state(gateway, admin)
    method = "PUT" if case.path.startswith("/admin") else "POST"
    reply = admin.call(method, case.path, case.document)
    assert reply.status == case.status, reply
    # The message may quote the client's own path text back: that is no leak.
    document = reply.json()
    assert list(document) == ["error"], document
    assert isinstance(document["error"], str)
    assert document["error"]
    assert "Traceback" not in document["error"]
    assert _route_state(gateway, admin) == before
    assert_still_serving(gateway.served)


# --- row 35: YAML tags that construct objects --------------------------------------------------


@dataclass(frozen=True)
class YamlCase:
    """A file with a constructing tag, how it is handed to turnout, and the marker file the tag
    would create if it ran."""

    name: str
    relative: str  # where the YAML goes, under the case's folder
    text: str  # {marker} is replaced with the marker's path
    argv: tuple[str, ...]  # {dir} is the case's folder

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"row35-{self.name}"


# Seven interpreters start at once; on a loaded two-core machine that can take a while.
YAML_TIMEOUT_S = 150.0
SERVE = ("serve", "--http-port", "0", "--grpc-port", "0", "--state-dir", "{dir}/state")
YAML_CASES = [
    YamlCase(
        "apply-in-a-model-entry",
        "turnout.yaml",
        'models:\n  - !!python/object/apply:os.system ["touch {marker}"]\n',
        (*SERVE, "--config", "{dir}/turnout.yaml"),
    ),
    YamlCase(
        "name-as-a-path",
        "turnout.yaml",
        "models:\n  - {{name: mlp, version: 1, path: !!python/name:os.system }}\n",
        (*SERVE, "--config", "{dir}/turnout.yaml"),
    ),
    YamlCase(
        "new-popen-at-the-top",
        "turnout.yaml",
        '!!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n',
        (*SERVE, "--config", "{dir}/turnout.yaml"),
    ),
    YamlCase(
        "object-as-the-server",
        "turnout.yaml",
        "server: !!python/object:argparse.Namespace {{x: 1}}\n"
        "models:\n  - {{name: mlp, version: 1, path: model.onnx}}\n",
        (*SERVE, "--config", "{dir}/turnout.yaml"),
    ),
    YamlCase(
        "module-as-the-state-dir",
        "turnout.yaml",
        "models:\n  - {{name: mlp, version: 1, path: model.onnx}}\nstate_dir: !!python/module:os\n",
        (*SERVE, "--config", "{dir}/turnout.yaml"),
    ),
    YamlCase(
        "repository-model-settings",
        "repository/mlp/turnout.yaml",
        'instances: !!python/object/apply:os.system ["touch {marker}"]\n',
        (*SERVE, "--model-repository", "{dir}/repository"),
    ),
    YamlCase(
        "loadtest-scenario",
        "scenario.yaml",
        "phases:\n  - name: p\n    rate: 1\n"
        '    duration_s: !!python/object/apply:os.system ["touch {marker}"]\n',
        (
            "loadtest",
            "--target",
            "http://127.0.0.1:9",
            "--endpoint",
            "mlp",
            "--scenario",
            "{dir}/scenario.yaml",
            "--report",
            "{dir}/report",
        ),
    ),
]


@dataclass(frozen=True)
class Exited:
    """How a turnout command ended, and whether the tag's side effect happened."""

    returncode: int
    stderr: str
    marker_exists: bool


@pytest.fixture(scope="module")
def yaml_runs(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exited]:
    """Every YAML case's command, started together so that their start-up overlaps."""
    model = repository / "mlp" / "1" / "model.onnx"
    running: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    for case in YAML_CASES:
        folder = tmp_path_factory.mktemp(case.id)
        marker = folder / "MARKER"
        shutil.copy(model, folder / "model.onnx")
        (folder / "repository" / "mlp" / "1").mkdir(parents=True)
        shutil.copy(model, folder / "repository" / "mlp" / "1" / "model.onnx")
        (folder / case.relative).write_text(case.text.format(marker=marker))
        argv = [argument.format(dir=folder) for argument in case.argv]
        process = subprocess.Popen(
            [str(TURNOUT), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        running[case.name] = (process, marker)
    finished = {}
    deadline = time.monotonic() + YAML_TIMEOUT_S
    try:
        for name, (process, marker) in running.items():
            _, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            finished[name] = Exited(process.returncode, stderr, marker.exists())
    finally:
        for process, _ in running.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return finished


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in YAML_CASES])
def test_row35_constructing_yaml_tags_are_refused(
    yaml_runs: dict[str, Exited], case: YamlCase
) -> None:
    exited = yaml_runs[case.name]
    assert exited.returncode == 2, exited
    assert not exited.marker_exists, "the tag ran"
    assert "could not determine a constructor for the tag" in exited.stderr, exited.stderr
    assert "python/" in exited.stderr
    assert Path(case.relative).name in exited.stderr, exited.stderr
    assert "line " in exited.stderr
    assert "Traceback" not in exited.stderr


# --- rows 24-26: signals -----------------------------------------------------------------------


def _lifecycle_server(repository: Path, root: Path, drain_timeout_s: float) -> TurnoutProcess:
    """A server of its own (it is stopped by the test): mlp 1 and the slow echo ``slow``."""
    write_model(slow_echo(), root / "echo.onnx")
    config = write_config(
        root / "turnout.yaml",
        {
            "server": {"drain_timeout_s": drain_timeout_s},
            "models": [
                {"name": "mlp", "version": 1, "path": str(repository / "mlp" / "1" / "model.onnx")},
                {"name": "slow", "version": 1, "path": "echo.onnx", "device": "cpu"},
            ],
        },
    )
    return TurnoutProcess(["--config", str(config)], root / "run")


def _status_or_none(process: TurnoutProcess, path: str) -> int | None:
    try:
        return request(process.http_url, "GET", path).status
    except (OSError, http.client.HTTPException):
        return None


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT], ids=["row24-sigterm", "row24-sigint"]
)
def test_row24_signal_with_queued_and_executing_requests(
    repository: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """One request runs and three wait (one per client) when the signal comes: readiness goes
    503 while liveness stays 200, new requests are refused, every accepted request is answered
    with its own rows, and the process exits 0."""
    waiting = {
        "http": _echo_values(10, rows=2),
        "stub": _echo_values(20, rows=1),
        "triton-grpc": _echo_values(30, rows=3),
    }
    liveness: list[int | None] = []
    with (
        _lifecycle_server(repository, tmp_path, 30.0) as process,
        grpc.insecure_channel(process.grpc_url) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        target = Served(process, stub, repository, "1")
        with occupied(target, "slow", CROWDED_STEPS):
            calls = {
                "http": InThread(functools.partial(patient_echo, process, "slow", waiting["http"])),
                "stub": InThread(functools.partial(stub_echo, stub, "slow", waiting["stub"])),
                "triton-grpc": InThread(
                    functools.partial(triton_grpc_echo, process, "slow", waiting["triton-grpc"])
                ),
            }
            until(lambda: queue_depth(process, "slow") == len(calls), "three requests waiting")
            process.process.send_signal(sig)
            until(lambda: "stop signal" in process.logs(), "the signal taken")

            def not_ready() -> bool:
                liveness.append(_status_or_none(process, "/v2/health/live"))
                return _status_or_none(process, "/v2/health/ready") != 200

            until(not_ready, "not ready")
            try:
                fresh = post_json(
                    process.http_url, "/v2/models/slow/infer", echo_body(_echo_values(1))
                )
            except (OSError, http.client.HTTPException):
                pass  # the listener is closed: refused as well
            else:
                check_http_error(fresh, 503, ("shutting down",))
        for name, call in calls.items():
            outcome = call.result(PATIENT_S)
            assert outcome.values is not None, (name, outcome)
            np.testing.assert_array_equal(outcome.values, waiting[name])
        assert process.process.wait(30) == 0, process.logs()
    # Live until the listeners close (then nothing answers at all): never anything but 200.
    assert set(liveness) <= {200, None}, liveness
    assert "grace period over" not in process.logs()
    assert "Traceback" not in process.logs()


class _KeepSending:
    """A client that sends good requests without pause until told to stop or cut off; each
    outcome is the answer's status (checked) or "closed"."""

    def __init__(self, target: Served, protocol: str) -> None:
        self.outcomes: list[str] = []
        self._target = target
        self._protocol = protocol
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rows = mlp_rows(1, seed=25)
        expected = mlp_reference(self._target.repository, "1", rows)
        with HttpSession(self._target.process.http_url) as session:
            while not self._stop.is_set():
                outcome = self._once(session, rows, expected)
                self.outcomes.append(outcome)
                if outcome == "closed" and self._protocol == "grpc":
                    return

    def _once(
        self, session: HttpSession, rows: np.ndarray, expected: Mapping[str, np.ndarray]
    ) -> str:
        if self._protocol == "grpc":
            tensor = _raw_tensor("INPUT0", "FP32", rows.shape)
            message = pb.ModelInferRequest(
                model_name="mlp", inputs=[tensor], raw_input_contents=[rows.tobytes()]
            )
            try:
                response = self._target.stub.ModelInfer(message, timeout=10)
            except grpc.RpcError as error:
                if "shutting down" in (error.details() or ""):
                    return "503"
                # A call that reaches the port as it closes is never admitted: grpc ends it
                # UNAVAILABLE or CANCELLED (the log shows no admitted request was cut off).
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    return "closed"
                return str(error.code().name)
            assert_mlp_outputs(raw_outputs(response), expected)
            return "200"
        try:
            reply = session.post("/v2/models/mlp/infer", mlp_json_request(rows))
        except (OSError, http.client.HTTPException):
            return "closed"
        if reply.status == 200:
            outputs = {name: json_array(reply, name) for name in ("OUTPUT0", "LABEL")}
            assert_mlp_outputs(outputs, expected)
        else:
            check_http_error(reply, 503, ("shutting down",))
        return str(reply.status)

    def stop(self) -> list[str]:
        """Stop sending; every outcome."""
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.outcomes


@pytest.mark.parametrize(
    "protocol", ["http", "grpc"], ids=["row25-http-keep-alive", "row25-grpc-channel"]
)
def test_row25_client_that_keeps_sending_does_not_extend_the_grace(
    repository: Path, tmp_path: Path, protocol: str
) -> None:
    """A client keeps sending on one kept-alive connection (HTTP) or channel (gRPC) through the
    signal: each request is served correctly, refused 503 / UNAVAILABLE, or its connection
    closed; and the process exits 0 although the client never stops. A second, idle kept-alive
    HTTP connection does not hold the exit either."""
    with (
        _lifecycle_server(repository, tmp_path, 2.0) as process,
        grpc.insecure_channel(process.grpc_url) as channel,
    ):
        target = Served(process, pb_grpc.GRPCInferenceServiceStub(channel), repository, "1")
        idle = socket.create_connection(("127.0.0.1", process.http_port), timeout=10)
        body = _encode(mlp_json_request(mlp_rows(1)))
        idle.sendall(_head(f"Content-Length: {len(body)}\r\n") + body)
        (served,) = _read_replies(idle, 1)
        assert served is not None
        assert served.status == 200, served
        sender = _KeepSending(target, protocol)
        until(lambda: sender.outcomes.count("200") >= 20, "the client under way")
        process.process.send_signal(signal.SIGTERM)
        status = process.process.wait(30)
        outcomes = sender.stop()
        idle.close()
    assert status == 0, process.logs()
    assert set(outcomes) <= {"200", "503", "closed"}, outcomes
    assert "grace period over" not in process.logs(), "an admitted request was cut off"
    assert "Traceback" not in process.logs()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(signal.SIGTERM, signal.SIGINT, id="row26-sigterm-then-sigint"),
        pytest.param(signal.SIGINT, signal.SIGINT, id="row26-sigint-twice"),
    ],
)
def test_row26_second_signal_during_the_drain_exits_at_once(
    repository: Path, tmp_path: Path, first: signal.Signals, second: signal.Signals
) -> None:
    with (
        _lifecycle_server(repository, tmp_path, 30.0) as process,
        grpc.insecure_channel(process.grpc_url) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        started = launched(process, "slow")
        endless = InThread(
            functools.partial(stub_echo, stub, "slow", np.array([[ENDLESS_STEPS]]), None, 60.0)
        )
        until(lambda: launched(process, "slow") == started + 1, "the endless request")
        process.process.send_signal(first)
        until(lambda: "stop signal" in process.logs(), "the drain under way")
        assert process.process.poll() is None, "the drain waits for the request in flight"
        process.process.send_signal(second)
        status = process.process.wait(30)
        outcome = endless.result(PATIENT_S)
    assert status == 1, process.logs()
    assert outcome.values is None, outcome
