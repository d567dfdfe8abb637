"""Dynamic batching end to end: requests that wait while a version's only instance is busy run
together in one execution, and every caller still gets exactly its own rows; requests of other
shapes never share a run; batching can be switched off; the model configuration reports it.

Batches are made deterministic, not hoped for: a slow request first occupies the instance, the
others are sent and seen waiting in the queue (turnout_queue_depth), and only then is the slow
request allowed to finish, so everything queued forms known batches."""

import functools
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.support.batching_models import (
    BUSY_STEPS,
    busy_mlp_rows,
    slow_echo,
    slow_gather,
    slow_mlp,
    slow_text,
)
from tests.support.e2e import (
    ATOL,
    RTOL,
    assert_mlp_outputs,
    mlp_json_request,
    mlp_rows,
    run_onnx,
    scrape,
    write_config,
)
from tests.support.onnx_models import fixed_shape, write_model
from tests.support.polling import wait_for
from tests.support.rawhttp import Reply, post_json
from tests.support.scheduling import (
    Busy,
    InThread,
    echo_body,
    echo_message,
    echo_values,
    executions_by_batch_size,
    grown,
    json_array,
    queue_depth,
    raw_outputs,
    series,
)
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

MLP_FILE = "slow_mlp.onnx"
ECHO_FILE = "slow_echo.onnx"
OUTPUTS = ("OUTPUT0", "LABEL")
SMALL_BATCH = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config and models of this file's server."""
    root = tmp_path_factory.mktemp("batching")
    write_model(slow_mlp(seed=3), root / MLP_FILE)
    write_model(slow_echo(), root / ECHO_FILE)
    write_model(fixed_shape(), root / "fixed.onnx")
    write_model(slow_gather(), root / "gather.onnx")
    write_model(slow_text(), root / "text.onnx")
    cpu = {"version": 1, "device": "cpu"}
    write_config(
        root / "turnout.yaml",
        {
            "models": [
                {"name": "mlp", "path": MLP_FILE, **cpu},
                {"name": "mlp_on", "path": MLP_FILE, **cpu},
                {
                    "name": "mlp_off",
                    "path": MLP_FILE,
                    "dynamic_batching": {"enabled": False},
                    **cpu,
                },
                {
                    "name": "mlp_tuned",
                    "path": MLP_FILE,
                    "max_batch_size": 8,
                    "dynamic_batching": {
                        "max_queue_delay_us": 1500,
                        "preferred_batch_sizes": [4, 2],
                    },
                    **cpu,
                },
                {"name": "mlp_bound", "path": MLP_FILE, "io_binding": "on", **cpu},
                {"name": "mlp_small", "path": MLP_FILE, "max_batch_size": SMALL_BATCH, **cpu},
                {"name": "widths", "path": ECHO_FILE, **cpu},
                {"name": "gather", "path": "gather.onnx", **cpu},
                {"name": "text", "path": "text.onnx", **cpu},
                {"name": "fixed", "path": "fixed.onnx", **cpu},
            ]
        },
    )
    return root


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[TurnoutProcess]:
    """This file's own server (it shadows the shared one)."""
    with TurnoutProcess(["--config", str(workdir / "turnout.yaml")], workdir / "run") as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture(scope="module")
def stub(server: TurnoutProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Turnout's own stub on a channel to this file's server."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _busy_mlp(server: TurnoutProcess, model: str) -> Busy:
    """Keeps ``model``'s instance busy with one slow classifier row."""
    rows = busy_mlp_rows()

    def check(reply: Reply) -> None:
        assert reply.status == 200, reply
        assert json_array(reply, "OUTPUT0").shape == (1, 10)

    return Busy(server, model, mlp_json_request(rows), check)


# --- concurrent Triton clients on both protocols --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientCall:
    """One request of the concurrent traffic: its protocol, rows, the rows' seed and the
    outputs it asks for (all when empty)."""

    protocol: str
    rows: int
    seed: int
    outputs: tuple[str, ...] = ()

    @property
    def answered(self) -> tuple[str, ...]:
        """The outputs its answer must carry."""
        return self.outputs or OUTPUTS


# Mixed row counts (1..4) over both protocols, two asking for one output only: 20 rows in
# 8 requests.
CONCURRENT_CALLS = (
    ClientCall("grpc", 1, seed=100),
    ClientCall("http", 2, seed=101),
    ClientCall("grpc", 3, seed=102, outputs=("LABEL",)),
    ClientCall("http", 4, seed=103),
    ClientCall("grpc", 4, seed=104),
    ClientCall("http", 3, seed=105, outputs=("OUTPUT0",)),
    ClientCall("grpc", 2, seed=106),
    ClientCall("http", 1, seed=107),
)


def _triton_grpc(
    url: str, call: ClientCall, rows: np.ndarray, request_id: str
) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("INPUT0", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        outputs = [grpcclient.InferRequestedOutput(name) for name in call.outputs] or None
        result = client.infer(
            "mlp", [tensor], outputs=outputs, request_id=request_id, client_timeout=30
        )
        response = result.get_response()
        assert response.id == request_id
        return {output.name: result.as_numpy(output.name) for output in response.outputs}
    finally:
        client.close()


def _triton_http(
    url: str, call: ClientCall, rows: np.ndarray, request_id: str
) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(url, network_timeout=30)
    try:
        tensor = httpclient.InferInput("INPUT0", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=True)
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=True) for name in call.answered
        ]
        result = client.infer("mlp", [tensor], outputs=outputs, request_id=request_id)
        response = result.get_response()
        assert response["id"] == request_id
        return {output["name"]: result.as_numpy(output["name"]) for output in response["outputs"]}
    finally:
        client.close()


def test_concurrent_clients_each_get_their_own_rows(server: TurnoutProcess, workdir: Path) -> None:
    inputs = [mlp_rows(call.rows, seed=call.seed) for call in CONCURRENT_CALLS]
    before = scrape(server)
    executions_before = executions_by_batch_size(server, "mlp")
    senders: dict[str, Callable[[str, ClientCall, np.ndarray, str], dict[str, np.ndarray]]] = {
        "grpc": _triton_grpc,
        "http": _triton_http,
    }
    with ThreadPoolExecutor(max_workers=len(CONCURRENT_CALLS)) as pool, _busy_mlp(server, "mlp"):
        futures = [
            pool.submit(
                senders[call.protocol],
                server.grpc_url if call.protocol == "grpc" else server.http_url,
                call,
                rows,
                f"call-{index}",
            )
            for index, (call, rows) in enumerate(zip(CONCURRENT_CALLS, inputs, strict=True))
        ]
        wait_for(
            lambda: queue_depth(server, "mlp") == len(CONCURRENT_CALLS),
            "every request waiting behind the slow one",
        )
    answers = [future.result(timeout=30) for future in futures]

    for call, rows, answer in zip(CONCURRENT_CALLS, inputs, answers, strict=True):
        assert sorted(answer) == sorted(call.answered), call
        expected = run_onnx(workdir / MLP_FILE, {"INPUT0": rows})
        for name, array in answer.items():
            assert array.shape == expected[name].shape, (call, name)
            np.testing.assert_allclose(array, expected[name], rtol=RTOL, atol=ATOL)

    after = scrape(server)
    total_rows = sum(call.rows for call in CONCURRENT_CALLS)
    runs = series(after, "turnout_batch_size_count", "mlp") - series(
        before, "turnout_batch_size_count", "mlp"
    )
    rows_run = series(after, "turnout_batch_size_sum", "mlp") - series(
        before, "turnout_batch_size_sum", "mlp"
    )
    # The slow row ran alone; everything queued behind it ran as one batch.
    assert (runs, rows_run) == (2, 1 + total_rows)
    assert rows_run / runs > 1
    assert grown(executions_before, executions_by_batch_size(server, "mlp")) == {
        1: 1,
        total_rows: 1,
    }
    assert series(after, "turnout_queue_depth", "mlp") == 0


def test_batch_size_histogram_has_batch_buckets(server: TurnoutProcess) -> None:
    metrics = scrape(server)
    assert "# TYPE turnout_batch_size histogram" in metrics.text
    buckets = metrics.find("turnout_batch_size_bucket", endpoint="mlp", version="1")
    bounds = [sample.labels["le"] for sample in buckets]
    assert bounds[-1] == "+Inf"
    assert [float(bound) for bound in bounds[:-1]] == sorted(float(b) for b in bounds[:-1])
    values = [sample.value for sample in buckets]
    assert values == sorted(values), "bucket counts must be cumulative"
    assert values[-1] == series(metrics, "turnout_batch_size_count", "mlp")


# --- batching on and off --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueuedCase:
    """Requests of ``rows`` each queued behind one slow row, and the runs they must make."""

    model: str
    rows: tuple[int, ...]
    executions: dict[int, int]  # rows of a run -> runs, the slow one included


QUEUED_CASES = [
    # Everything waiting behind the slow row runs as one batch.
    pytest.param(QueuedCase("mlp_on", (1, 1, 1, 1), {1: 1, 4: 1}), id="enabled"),
    # With batching off every request runs alone: only batch size 1.
    pytest.param(QueuedCase("mlp_off", (1, 1, 1, 1), {1: 5}), id="disabled"),
    # I/O binding on the CPU: the batch is gathered into the instance's buffer and bound.
    pytest.param(QueuedCase("mlp_bound", (1, 2, 1), {1: 1, 4: 1}), id="io-binding"),
    # Preferred sizes [2, 4]: five waiting rows are cut to a batch of 4; the last runs alone
    # (it has waited longer than max_queue_delay_us already).
    pytest.param(QueuedCase("mlp_tuned", (1, 1, 1, 1, 1), {1: 2, 4: 1}), id="preferred-sizes"),
]


@pytest.mark.parametrize("case", QUEUED_CASES)
def test_requests_queued_behind_a_slow_one(
    server: TurnoutProcess, workdir: Path, case: QueuedCase
) -> None:
    before = executions_by_batch_size(server, case.model)
    inputs = [mlp_rows(rows, seed=200 + index) for index, rows in enumerate(case.rows)]
    with _busy_mlp(server, case.model):
        calls = [_post_mlp(server, case.model, rows) for rows in inputs]
        wait_for(lambda: queue_depth(server, case.model) == len(inputs), "the requests queued")
    for call, rows in zip(calls, inputs, strict=True):
        reply = call.result()
        outputs = {name: json_array(reply, name) for name in OUTPUTS}
        assert_mlp_outputs(outputs, run_onnx(workdir / MLP_FILE, {"INPUT0": rows}))
    assert grown(before, executions_by_batch_size(server, case.model)) == case.executions


def _post_mlp(server: TurnoutProcess, model: str, rows: np.ndarray) -> InThread[Reply]:
    """POST a classifier request in a thread."""
    path = f"/v2/models/{model}/infer"
    return InThread(functools.partial(post_json, server.http_url, path, mlp_json_request(rows)))


def test_batches_stay_within_max_batch_size(server: TurnoutProcess, workdir: Path) -> None:
    before = executions_by_batch_size(server, "mlp_small")
    sizes = (2, 3, 1, 2)
    inputs = [mlp_rows(rows, seed=250 + index) for index, rows in enumerate(sizes)]
    with _busy_mlp(server, "mlp_small"):
        calls = [_post_mlp(server, "mlp_small", rows) for rows in inputs]
        wait_for(lambda: queue_depth(server, "mlp_small") == len(inputs), "the requests queued")
    for call, rows in zip(calls, inputs, strict=True):
        reply = call.result()
        outputs = {name: json_array(reply, name) for name in OUTPUTS}
        assert_mlp_outputs(outputs, run_onnx(workdir / MLP_FILE, {"INPUT0": rows}))
    runs = grown(before, executions_by_batch_size(server, "mlp_small"))
    assert max(runs) <= SMALL_BATCH, runs
    assert sum(size * count for size, count in runs.items()) == 1 + sum(sizes)
    # Some of the four waiting requests shared a run.
    assert sum(runs.values()) < 1 + len(sizes), runs
    too_many = post_json(
        server.http_url,
        "/v2/models/mlp_small/infer",
        mlp_json_request(mlp_rows(SMALL_BATCH + 1)),
    )
    assert too_many.status == 400, too_many
    assert str(SMALL_BATCH) in too_many.error()


def _text_body(delay: list[int], text: list[str]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "DELAY", "datatype": "INT64", "shape": [len(delay), 1], "data": delay},
            {"name": "TEXT", "datatype": "BYTES", "shape": [len(text)], "data": text},
        ]
    }


# Strings of different lengths and scripts, queued into one batch of 6 rows.
TEXTS = (["a"], ["", "longer text than the others"], ["naïve café", "数据", "🙂 emoji"])


def test_string_requests_batch_and_get_their_own_text(server: TurnoutProcess) -> None:
    def check_busy(reply: Reply) -> None:
        assert reply.json()["outputs"], reply

    before = executions_by_batch_size(server, "text")
    with Busy(server, "text", _text_body([BUSY_STEPS], ["busy"]), check_busy):
        calls = [
            InThread(
                functools.partial(
                    post_json,
                    server.http_url,
                    "/v2/models/text/infer",
                    _text_body([0] * len(text), text),
                )
            )
            for text in TEXTS
        ]
        wait_for(lambda: queue_depth(server, "text") == len(TEXTS), "the requests queued")
    for call, text in zip(calls, TEXTS, strict=True):
        reply = call.result()
        assert reply.status == 200, reply
        outputs = {output["name"]: output for output in reply.json()["outputs"]}
        assert outputs["ECHO"]["data"] == text
        assert outputs["ECHO"]["shape"] == [len(text)]
        assert outputs["WAITED"]["data"] == [0] * len(text)
    assert grown(before, executions_by_batch_size(server, "text")) == {
        1: 1,
        sum(map(len, TEXTS)): 1,
    }


# --- a bad member of a batch ----------------------------------------------------------------------


def _gather_body(delay: list[int], index: list[int]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "DELAY", "datatype": "INT64", "shape": [len(delay), 1], "data": delay},
            {"name": "INDEX", "datatype": "INT64", "shape": [len(index)], "data": index},
        ]
    }


@dataclass(frozen=True, slots=True)
class GatherCall:
    """A request of ``gather`` queued into one batch with the others, and its answer."""

    index: tuple[int, ...]
    status: int
    rows: tuple[tuple[float, float], ...] = ()


# The table's row i is (2i, 2i + 1); index 7 is out of range, which ONNX Runtime refuses only
# when it runs, failing the whole batch: each member is then run alone, so only its owner fails.
GATHER_CALLS = {
    "before": GatherCall((1, -1), 200, ((2.0, 3.0), (4.0, 5.0))),
    "out-of-range": GatherCall((0, 7), 400),
    "after": GatherCall((2,), 200, ((4.0, 5.0),)),
}


def test_a_bad_member_fails_alone(server: TurnoutProcess) -> None:
    def check_busy(reply: Reply) -> None:
        np.testing.assert_array_equal(json_array(reply, "ROW"), [[0.0, 1.0]])

    before = scrape(server)
    busy = Busy(server, "gather", _gather_body([BUSY_STEPS], [0]), check_busy)
    with busy:
        calls = {
            name: InThread(
                functools.partial(
                    post_json,
                    server.http_url,
                    "/v2/models/gather/infer",
                    _gather_body([0] * len(call.index), list(call.index)),
                )
            )
            for name, call in GATHER_CALLS.items()
        }
        wait_for(lambda: queue_depth(server, "gather") == len(calls), "the requests queued")
    for name, expected in GATHER_CALLS.items():
        reply = calls[name].result()
        assert reply.status == expected.status, (name, reply)
        if expected.status == 200:
            np.testing.assert_array_equal(json_array(reply, "ROW"), expected.rows)
        else:
            assert "gather" in reply.error()
    after = scrape(server)
    labels = {"endpoint": "gather", "version": "1", "protocol": "http"}
    for status, count in (("success", 1 + 2), ("invalid_input", 1)):
        grew = after.value("turnout_requests_total", status=status, **labels) - before.value(
            "turnout_requests_total", status=status, **labels
        )
        assert grew == count, status


# --- shapes that must not be mixed ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapedCall:
    """A request of the ``widths`` model: its protocol, rows and width."""

    protocol: str
    rows: int
    width: int


# Queued in this order behind a slow [1, 1] request: widths 2 and 3 interleaved. Width 2 makes
# 1 + 2 = 3 rows and width 3 makes 2 + 3 = 5: a mixed run would have had 8.
SHAPED_CALLS = (
    ShapedCall("http", 1, 2),
    ShapedCall("grpc", 2, 3),
    ShapedCall("grpc", 2, 2),
    ShapedCall("http", 3, 3),
)


def test_requests_of_other_shapes_never_share_a_run(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = executions_by_batch_size(server, "widths")
    values = [
        echo_values(call.rows, call.width, start=10 * index + 1)
        for index, call in enumerate(SHAPED_CALLS)
    ]

    def send(call: ShapedCall, array: np.ndarray) -> Callable[[], np.ndarray]:
        if call.protocol == "http":
            return lambda: json_array(
                post_json(server.http_url, "/v2/models/widths/infer", echo_body(array)), "Y"
            )
        message = echo_message("widths", array)
        return lambda: raw_outputs(stub.ModelInfer(message, timeout=30))["Y"]

    with Busy(server, "widths"):
        calls = [
            InThread(send(call, array)) for call, array in zip(SHAPED_CALLS, values, strict=True)
        ]
        wait_for(lambda: queue_depth(server, "widths") == len(SHAPED_CALLS), "the requests queued")
    for call, array in zip(calls, values, strict=True):
        np.testing.assert_array_equal(call.result(), array)
    assert grown(before, executions_by_batch_size(server, "widths")) == {1: 1, 3: 1, 5: 1}


# --- the model configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigCase:
    """What a model's configuration must say about batching."""

    model: str
    max_batch_size: int
    dynamic_batching: dict[str, Any] | None


CONFIG_CASES = [
    pytest.param(
        ConfigCase("mlp", 64, {"preferred_batch_size": [], "max_queue_delay_microseconds": 0}),
        id="default",
    ),
    pytest.param(
        ConfigCase(
            "mlp_tuned", 8, {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 1500}
        ),
        id="tuned",
    ),
    pytest.param(ConfigCase("mlp_off", 64, None), id="disabled"),
    pytest.param(ConfigCase("fixed", 0, None), id="no-batch-dimension"),
]


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_http_config_reports_dynamic_batching(server: TurnoutProcess, case: ConfigCase) -> None:
    status, body = server.get(f"/v2/models/{case.model}/config")
    assert status == 200, body
    document = json.loads(body)
    assert document["max_batch_size"] == case.max_batch_size
    assert document.get("dynamic_batching") == case.dynamic_batching


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_grpc_config_reports_dynamic_batching(
    stub: pb_grpc.GRPCInferenceServiceStub, case: ConfigCase
) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name=case.model), timeout=10).config
    assert config.max_batch_size == case.max_batch_size
    if case.dynamic_batching is None:
        assert config.WhichOneof("scheduling_choice") is None
        return
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == case.dynamic_batching["preferred_batch_size"]
    assert (
        batching.max_queue_delay_microseconds
        == case.dynamic_batching["max_queue_delay_microseconds"]
    )


def test_triton_grpc_client_reads_dynamic_batching(server: TurnoutProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        config = client.get_model_config("mlp_tuned", as_json=True)["config"]
    finally:
        client.close()
    assert config["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 1500


def test_tuned_model_still_answers_correctly(server: TurnoutProcess, workdir: Path) -> None:
    rows = mlp_rows(3, seed=7)
    reply = post_json(server.http_url, "/v2/models/mlp_tuned/infer", mlp_json_request(rows))
    outputs = {"OUTPUT0": json_array(reply, "OUTPUT0"), "LABEL": json_array(reply, "LABEL")}
    assert_mlp_outputs(outputs, run_onnx(workdir / MLP_FILE, {"INPUT0": rows}))
