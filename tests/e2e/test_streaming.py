"""gRPC ModelStreamInfer (Triton's streaming extension) end to end: many requests on one stream
each answered and matched by id with ONNX Runtime's outputs; a failed request answered on the
stream with its error (and its id) while the stream stays open; closing the stream, gracefully
or by cancelling, leaves the server clean."""

import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.batching_models import BUSY_STEPS, slow_echo
from tests.support.e2e import (
    ATOL,
    RTOL,
    assert_mlp_outputs,
    inflight,
    mlp_rows,
    run_onnx,
    scrape,
    write_config,
)
from tests.support.onnx_models import write_model
from tests.support.polling import wait_for
from tests.support.rawhttp import assert_no_leak
from tests.support.scheduling import (
    Busy,
    busy_echo,
    echo_values,
    launched,
    queue_depth,
    raw_outputs,
    series,
)
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.server.demo import build_mlp

MLP_FILE = "mlp.onnx"
ANSWER_TIMEOUT_S = 30.0
OUTPUTS = ("OUTPUT0", "LABEL")
# Requests on one stream in the many-requests test.
STREAM_REQUESTS = 32
# Requests a stream has outstanding at most (README: up to 256; reading pauses beyond that),
# and how many the window test sends.
STREAM_WINDOW = 256
WINDOW_TEST = STREAM_WINDOW + 44


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config and models of this file's server: a classifier ``mlp`` and the slow echo
    model ``echo``, one CPU instance each."""
    root = tmp_path_factory.mktemp("streaming")
    write_model(build_mlp(seed=4), root / MLP_FILE)
    write_model(slow_echo(), root / "echo.onnx")
    write_config(
        root / "turnout.yaml",
        {
            "models": [
                {"name": "mlp", "version": 1, "path": MLP_FILE, "device": "cpu"},
                {"name": "echo", "version": 1, "path": "echo.onnx", "device": "cpu"},
            ]
        },
    )
    return root


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[TurnoutProcess]:
    """This file's own server; it must stop cleanly with no traceback in its log."""
    with TurnoutProcess(["--config", str(workdir / "turnout.yaml")], workdir / "run") as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture
def client(server: TurnoutProcess) -> Iterator[grpcclient.InferenceServerClient]:
    """Triton's gRPC client of this file's server (a stream per test at most)."""
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    yield triton
    triton.stop_stream()
    triton.close()


@pytest.fixture(scope="module")
def stub(server: TurnoutProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Turnout's own stub on a channel to this file's server."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


Answer = tuple[grpcclient.InferResult | None, InferenceServerException | None]


class Answers:
    """The stream callback: every (result, error) it is given, in arrival order."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Answer] = queue.Queue()

    def __call__(
        self, result: grpcclient.InferResult | None, error: InferenceServerException | None
    ) -> None:
        self._queue.put((result, error))

    def next(self) -> Answer:
        """The next answer; fails when none comes within ANSWER_TIMEOUT_S."""
        try:
            return self._queue.get(timeout=ANSWER_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError("no answer on the stream") from None

    def result(self) -> grpcclient.InferResult:
        """The next answer, which must be a success."""
        result, error = self.next()
        assert error is None, error
        assert result is not None
        return result

    def error(self) -> InferenceServerException:
        """The next answer, which must be an error."""
        result, error = self.next()
        assert result is None, result.get_response() if result else None
        assert error is not None
        return error

    def pending(self) -> int:
        """Answers received and not taken yet."""
        return self._queue.qsize()


def _mlp_inputs(rows: np.ndarray, name: str = "INPUT0", datatype: str = "FP32") -> list[object]:
    tensor = grpcclient.InferInput(name, list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(np.float64) if datatype == "FP64" else rows)
    return [tensor]


def _check_mlp(workdir: Path, result: grpcclient.InferResult, rows: np.ndarray) -> None:
    outputs = {name: result.as_numpy(name) for name in OUTPUTS}
    assert_mlp_outputs(outputs, run_onnx(workdir / MLP_FILE, {"INPUT0": rows}))


# --- many requests on one stream ------------------------------------------------------------------


def test_many_requests_on_one_stream_are_matched_by_id(
    client: grpcclient.InferenceServerClient, workdir: Path
) -> None:
    answers = Answers()
    client.start_stream(callback=answers)
    sent = {
        f"request-{index}": mlp_rows(1 + index % 4, seed=300 + index)
        for index in range(STREAM_REQUESTS)
    }
    selected = {request_id for index, request_id in enumerate(sent) if index % 3 == 0}
    for request_id, rows in sent.items():
        outputs = [grpcclient.InferRequestedOutput("OUTPUT0")] if request_id in selected else None
        client.async_stream_infer("mlp", _mlp_inputs(rows), request_id=request_id, outputs=outputs)
    received = {}
    for _ in sent:
        result = answers.result()
        response = result.get_response()
        assert response.id not in received, f"{response.id} answered twice"
        received[response.id] = result
    assert set(received) == set(sent)
    for request_id, rows in sent.items():
        result = received[request_id]
        response = result.get_response()
        assert response.model_name == "mlp"
        assert response.model_version == "1"
        expected = run_onnx(workdir / MLP_FILE, {"INPUT0": rows})
        if request_id in selected:
            assert [output.name for output in response.outputs] == ["OUTPUT0"]
            np.testing.assert_allclose(
                result.as_numpy("OUTPUT0"), expected["OUTPUT0"], rtol=RTOL, atol=ATOL
            )
        else:
            _check_mlp(workdir, result, rows)
    client.stop_stream()
    assert answers.pending() == 0


# --- bad requests on a stream ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request the server must refuse on the stream, and what its error message names: one
    input ``name`` of ``datatype`` carrying ``array`` (declared with ``shape`` when given)."""

    model: str
    version: str
    name: str
    datatype: str
    array: np.ndarray
    fragments: tuple[str, ...]
    shape: tuple[int, ...] | None = None

    @property
    def declared_shape(self) -> list[int]:
        """The shape the request declares."""
        return list(self.shape if self.shape is not None else self.array.shape)

    def message(self, request_id: str) -> pb.ModelInferRequest:
        """The request as Turnout's stub sends it."""
        tensor = _tensor(self.name, self.datatype, tuple(self.declared_shape))
        return pb.ModelInferRequest(
            model_name=self.model,
            model_version=self.version,
            id=request_id,
            inputs=[tensor],
            raw_input_contents=[self.array.tobytes()],
        )

    def send(self, client: grpcclient.InferenceServerClient, request_id: str) -> None:
        """Send it on the client's stream."""
        tensor = grpcclient.InferInput(self.name, list(self.array.shape), self.datatype)
        tensor.set_data_from_numpy(self.array)
        tensor.set_shape(self.declared_shape)
        client.async_stream_infer(
            self.model, [tensor], model_version=self.version, request_id=request_id
        )


def _tensor(
    name: str, datatype: str, shape: tuple[int, ...]
) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))


_ROW = mlp_rows(1, seed=1)
BAD_REQUESTS = {
    "unknown-input": BadRequest("mlp", "", "INPUT9", "FP32", _ROW, ("INPUT9",)),
    "unknown-model": BadRequest("no_such_model", "", "INPUT0", "FP32", _ROW, ("no_such_model",)),
    "unknown-version": BadRequest("mlp", "7", "INPUT0", "FP32", _ROW, ("7",)),
    "wrong-datatype": BadRequest(
        "mlp", "", "INPUT0", "INT32", _ROW.astype(np.int32), ("INPUT0", "INT32")
    ),
    "wrong-shape": BadRequest("mlp", "", "INPUT0", "FP32", _ROW[:, :63], ("INPUT0",)),
    # Declares two rows but carries one.
    "size-mismatch": BadRequest("mlp", "", "INPUT0", "FP32", _ROW, ("INPUT0",), shape=(2, 64)),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_triton_stream_reports_a_bad_request_and_stays_open(
    client: grpcclient.InferenceServerClient, workdir: Path, case: str
) -> None:
    bad = BAD_REQUESTS[case]
    answers = Answers()
    client.start_stream(callback=answers)
    before, after = mlp_rows(2, seed=11), mlp_rows(3, seed=12)
    client.async_stream_infer("mlp", _mlp_inputs(before), request_id="before")
    _check_mlp(workdir, answers.result(), before)
    bad.send(client, "bad")
    error = answers.error()
    message = error.message()
    assert message, error
    for fragment in bad.fragments:
        assert fragment in message, message
    assert_no_leak(message)
    client.async_stream_infer("mlp", _mlp_inputs(after), request_id="after")
    result = answers.result()
    assert result.get_response().id == "after"
    _check_mlp(workdir, result, after)
    client.stop_stream()
    assert answers.pending() == 0


def test_stub_stream_error_responses_carry_message_and_id(
    stub: pb_grpc.GRPCInferenceServiceStub, workdir: Path
) -> None:
    good = {f"good-{index}": mlp_rows(1 + index % 3, seed=400 + index) for index in range(6)}
    requests: list[pb.ModelInferRequest] = []
    for index, (request_id, rows) in enumerate(good.items()):
        tensor = _tensor("INPUT0", "FP32", rows.shape)
        requests.append(
            pb.ModelInferRequest(
                model_name="mlp",
                id=request_id,
                inputs=[tensor],
                raw_input_contents=[rows.tobytes()],
            )
        )
        # Interleave the bad requests with the good ones.
        names = list(BAD_REQUESTS)
        if index < len(names):
            requests.append(BAD_REQUESTS[names[index]].message(f"bad-{names[index]}"))
    sent = {request.id: request for request in requests}
    responses = list(stub.ModelStreamInfer(iter(requests), timeout=ANSWER_TIMEOUT_S))

    assert sorted(response.infer_response.id for response in responses) == sorted(sent)
    for response in responses:
        request_id = response.infer_response.id
        request = sent[request_id]
        if request_id.startswith("bad-"):
            bad = BAD_REQUESTS[request_id.removeprefix("bad-")]
            assert response.error_message, response
            for fragment in bad.fragments:
                assert fragment in response.error_message, response.error_message
            assert_no_leak(response.error_message)
            assert response.infer_response.model_name == request.model_name
            assert not response.infer_response.outputs
        else:
            assert response.error_message == "", response.error_message
            answer = response.infer_response
            assert answer.model_name == "mlp"
            assert answer.model_version == "1"
            assert_mlp_outputs(
                raw_outputs(answer), run_onnx(workdir / MLP_FILE, {"INPUT0": good[request_id]})
            )


def test_stub_stream_with_no_requests_ends_at_once(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert list(stub.ModelStreamInfer(iter(()), timeout=ANSWER_TIMEOUT_S)) == []


def test_more_requests_than_a_stream_runs_at_once_are_all_answered(
    server: TurnoutProcess, client: grpcclient.InferenceServerClient
) -> None:
    """Requests beyond the stream's window of outstanding requests (256) wait to be read, and
    are then all answered: sent while the echo model's instance is busy, they pile up."""
    answers = Answers()
    client.start_stream(callback=answers)
    sent = {f"many-{index}": echo_values(1, 1, start=index) for index in range(WINDOW_TEST)}
    # Three times the usual busy time: 300 requests take longer to send than a handful.
    with busy_echo(server, "echo", 3 * BUSY_STEPS):
        for request_id, values in sent.items():
            tensor = grpcclient.InferInput("X", list(values.shape), "INT64")
            tensor.set_data_from_numpy(values)
            client.async_stream_infer("echo", [tensor], request_id=request_id)
        # Reading pauses at the window: no more than that many are ever waiting.
        wait_for(lambda: queue_depth(server, "echo") == STREAM_WINDOW, "a full window queued")
    received = {}
    for _ in sent:
        result = answers.result()
        received[result.get_response().id] = result.as_numpy("Y")
    assert set(received) == set(sent)
    for request_id, values in sent.items():
        np.testing.assert_array_equal(received[request_id], values)
    client.stop_stream()


# --- deadlines and closing ------------------------------------------------------------------------


def test_stream_request_past_its_deadline_fails_alone(
    server: TurnoutProcess, client: grpcclient.InferenceServerClient
) -> None:
    answers = Answers()
    client.start_stream(callback=answers)
    late, fine = echo_values(1, 2, start=5), echo_values(2, 2, start=9)
    with Busy(server, "echo"):
        tensor = grpcclient.InferInput("X", list(late.shape), "INT64")
        tensor.set_data_from_numpy(late)
        # 50 ms (the parameter is in microseconds), far less than the slow request takes.
        client.async_stream_infer("echo", [tensor], request_id="late", timeout=50_000)
        error = answers.error()
    assert "deadline" in error.message(), error
    tensor = grpcclient.InferInput("X", list(fine.shape), "INT64")
    tensor.set_data_from_numpy(fine)
    client.async_stream_infer("echo", [tensor], request_id="fine")
    result = answers.result()
    assert result.get_response().id == "fine"
    np.testing.assert_array_equal(result.as_numpy("Y"), fine)


def test_stop_stream_waits_for_every_answer(
    server: TurnoutProcess, client: grpcclient.InferenceServerClient
) -> None:
    answers = Answers()
    client.start_stream(callback=answers)
    sent = {f"echo-{index}": echo_values(1 + index % 3, 2, start=20 * index) for index in range(12)}
    for request_id, values in sent.items():
        tensor = grpcclient.InferInput("X", list(values.shape), "INT64")
        tensor.set_data_from_numpy(values)
        client.async_stream_infer("echo", [tensor], request_id=request_id)
    # Half-closes the stream at once and returns when the server has answered everything.
    client.stop_stream()
    assert answers.pending() == len(sent)
    for _ in sent:
        result = answers.result()
        request_id = result.get_response().id
        np.testing.assert_array_equal(result.as_numpy("Y"), sent[request_id])
    wait_for(lambda: inflight(server, "grpc") == 0, "no gRPC request in flight")


def test_cancelled_stream_drops_its_queued_request(
    server: TurnoutProcess, client: grpcclient.InferenceServerClient
) -> None:
    """Cancelling a stream with one request running and one queued: the queued one is dropped
    and counted as abandoned, the running one finishes on its instance, and the server serves
    the next stream."""
    before = scrape(server)
    started = launched(server, "echo")
    answers = Answers()
    client.start_stream(callback=answers)
    slow = np.array([[BUSY_STEPS]], dtype=np.int64)
    tensor = grpcclient.InferInput("X", [1, 1], "INT64")
    tensor.set_data_from_numpy(slow)
    client.async_stream_infer("echo", [tensor], request_id="slow")
    wait_for(lambda: launched(server, "echo") == started + 1, "the slow request running")
    queued = grpcclient.InferInput("X", [1, 1], "INT64")
    queued.set_data_from_numpy(np.array([[3]], dtype=np.int64))
    client.async_stream_infer("echo", [queued], request_id="queued")
    wait_for(lambda: queue_depth(server, "echo") == 1, "the second request queued")
    client.stop_stream(cancel_requests=True)

    def abandoned() -> float:
        return series(scrape(server), "turnout_queue_abandoned_total", "echo") - series(
            before, "turnout_queue_abandoned_total", "echo"
        )

    wait_for(lambda: abandoned() == 1, "the queued request dropped")
    wait_for(lambda: inflight(server, "grpc") == 0, "no gRPC request in flight")
    assert queue_depth(server, "echo") == 0
    # The slow run finishes on the instance; then the next stream is served.
    fresh = Answers()
    client.start_stream(callback=fresh)
    values = echo_values(2, 3, start=40)
    tensor = grpcclient.InferInput("X", list(values.shape), "INT64")
    tensor.set_data_from_numpy(values)
    client.async_stream_infer("echo", [tensor], request_id="after-cancel")
    result = fresh.result()
    np.testing.assert_array_equal(result.as_numpy("Y"), values)
    # Only the slow request and this one ran: the dropped one never did.
    assert launched(server, "echo") == started + 2


def test_log_has_no_traceback(server: TurnoutProcess) -> None:
    logs = server.logs()
    assert "Traceback" not in logs, logs
    assert " ERROR " not in logs, logs
