"""Helpers for the end-to-end tests of the scheduler (batching, queues, deadlines, instances)
and the result cache: what a model version's queue and instances are doing now, requests run
in threads, and a slow request that keeps a version's only instance busy."""

import functools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.batching_models import BUSY_STEPS
from tests.support.e2e import scrape
from tests.support.polling import wait_for
from tests.support.prometheus import Scrape
from tests.support.rawhttp import Reply, post_json
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

_T = TypeVar("_T")
JOIN_TIMEOUT_S = 30.0
# numpy dtypes of the V2 datatypes these tests' models answer with.
DTYPES = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "INT32": np.int32}


class InThread(Generic[_T]):
    """Runs ``call`` in a thread of its own; ``result()`` joins it and returns what the call
    returned, or raises what it raised."""

    def __init__(self, call: Callable[[], _T]) -> None:
        self._call = call
        self._result: _T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._call()
        except BaseException as error:  # handed to the test thread by result()
            self._error = error

    def done(self) -> bool:
        """Whether the call has returned (or raised)."""
        return not self._thread.is_alive()

    def result(self, timeout_s: float = JOIN_TIMEOUT_S) -> _T:
        """Wait for the call and return its result (raising its exception)."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the call did not return within {timeout_s} s"
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


def series(metrics: Scrape, name: str, model: str, version: str = "1") -> float:
    """The value of a per-version scheduler or cache metric (0 when absent)."""
    return metrics.value(name, endpoint=model, version=version)


def launched(server: TurnoutProcess, model: str, version: str = "1") -> float:
    """How many requests of the version have left its queue for an instance so far (each is
    observed once by turnout_queue_duration_seconds when its batch starts)."""
    return series(scrape(server), "turnout_queue_duration_seconds_count", model, version)


def queue_depth(server: TurnoutProcess, model: str, version: str = "1") -> float:
    """Requests of the version waiting in its queue now."""
    return series(scrape(server), "turnout_queue_depth", model, version)


def model_stats(server: TurnoutProcess, model: str, version: str = "1") -> dict[str, Any]:
    """The statistics extension's document of one version."""
    status, body = server.get(f"/v2/models/{model}/versions/{version}/stats")
    assert status == 200, body
    documents: list[dict[str, Any]] = json.loads(body)["model_stats"]
    assert len(documents) == 1, documents
    return documents[0]


def executions_by_batch_size(server: TurnoutProcess, model: str) -> dict[int, int]:
    """How many times the version ran, by the rows of the run (the statistics' batch_stats)."""
    stats = model_stats(server, model)
    by_size = {
        int(entry["batch_size"]): int(entry["compute_infer"]["count"])
        for entry in stats["batch_stats"]
    }
    assert sum(by_size.values()) == stats["execution_count"], stats
    return by_size


def grown(before: Mapping[int, int], after: Mapping[int, int]) -> dict[int, int]:
    """The per-batch-size execution counts added between two readings."""
    return {
        size: count - before.get(size, 0)
        for size, count in after.items()
        if count != before.get(size, 0)
    }


def echo_body(values: np.ndarray, **extra: Any) -> dict[str, Any]:
    """A V2 JSON request of the slow echo model (input ``X`` INT64) for ``values``."""
    tensor = {
        "name": "X",
        "datatype": "INT64",
        "shape": list(values.shape),
        "data": values.reshape(-1).tolist(),
    }
    return {"inputs": [tensor], **extra}


def echo_values(rows: int, width: int, start: int) -> np.ndarray:
    """``rows`` by ``width`` distinct small INT64 values from ``start`` (few loop steps)."""
    return np.arange(start, start + rows * width, dtype=np.int64).reshape(rows, width)


def echo_message(
    model: str,
    values: np.ndarray,
    request_id: str = "",
    parameters: Mapping[str, pb.InferParameter] | None = None,
) -> pb.ModelInferRequest:
    """A gRPC request of the slow echo model for ``values``, sent raw."""
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="X", datatype="INT64", shape=list(values.shape)
    )
    return pb.ModelInferRequest(
        model_name=model,
        id=request_id,
        inputs=[tensor],
        raw_input_contents=[np.ascontiguousarray(values, dtype="<i8").tobytes()],
        parameters=parameters or {},
    )


def raw_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The outputs of a gRPC response (raw, as Turnout always answers) as arrays."""
    assert len(response.raw_output_contents) == len(response.outputs), response
    return {
        tensor.name: np.frombuffer(raw, dtype=np.dtype(DTYPES[tensor.datatype]).newbyteorder("<"))
        .reshape(tuple(tensor.shape))
        .astype(DTYPES[tensor.datatype])
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def json_array(reply: Reply, name: str) -> np.ndarray:
    """One output of a successful V2 JSON response as an array of its shape and datatype."""
    assert reply.status == 200, reply
    for output in reply.json()["outputs"]:
        if output["name"] == name:
            dtype = DTYPES[output["datatype"]]
            return np.asarray(output["data"], dtype=dtype).reshape(output["shape"])
    raise AssertionError(f"no output {name!r} in {reply}")


class Busy:
    """Keeps the only idle instance of ``model`` running one slow request (sent over HTTP in a
    thread) for as long as the ``with`` block lasts; on exit waits for it and checks that it
    succeeded. Entering returns once the request has left the queue for an instance.

    ``version`` pins the request to that version (the endpoint's route decides otherwise);
    ``timeout_s`` bounds every wait, for machines loaded enough to make the request slower."""

    def __init__(
        self,
        server: TurnoutProcess,
        model: str,
        body: Mapping[str, Any] | None = None,
        check: Callable[[Reply], None] | None = None,
        version: str | None = None,
        timeout_s: float = JOIN_TIMEOUT_S,
    ) -> None:
        self._server = server
        self._model = model
        self._body = body if body is not None else echo_body(np.array([[BUSY_STEPS]]))
        self._check = check if check is not None else _echoed_busy_steps
        self._version = version
        self._timeout_s = timeout_s
        self._call: InThread[Reply] | None = None

    def __enter__(self) -> "Busy":
        server, model, version = self._server, self._model, self._version or "1"
        started = launched(server, model, version)
        path = f"/v2/models/{model}/infer"
        if self._version is not None:
            path = f"/v2/models/{model}/versions/{version}/infer"
        self._call = InThread(
            functools.partial(post_json, server.http_url, path, self._body, None, self._timeout_s)
        )
        wait_for(
            lambda: launched(server, model, version) == started + 1,
            f"the slow request of {model} running",
            self._timeout_s,
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._call is not None
        reply = self._call.result(self._timeout_s)
        if exc is None:
            self._check(reply)


def busy_echo(
    server: TurnoutProcess,
    model: str,
    steps: int = BUSY_STEPS,
    version: str | None = None,
    timeout_s: float = JOIN_TIMEOUT_S,
) -> Busy:
    """``Busy`` with one slow echo request of ``steps`` loop steps."""

    def check(reply: Reply) -> None:
        assert reply.status == 200, reply
        np.testing.assert_array_equal(json_array(reply, "Y"), [[steps]])

    return Busy(server, model, echo_body(np.array([[steps]])), check, version, timeout_s)


def _echoed_busy_steps(reply: Reply) -> None:
    assert reply.status == 200, reply
    np.testing.assert_array_equal(json_array(reply, "Y"), [[BUSY_STEPS]])


# --- one request of the slow echo model by each kind of client, as a comparable outcome ---------


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended, whichever client sent it: ``code`` is the HTTP status ("200",
    "503", ...) or the gRPC status name ("OK", "RESOURCE_EXHAUSTED", ...); ``values`` is the
    echoed ``Y`` of a success."""

    code: str
    message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    values: np.ndarray | None = None


def http_echo(
    server: TurnoutProcess, model: str, values: np.ndarray, timeout_us: int | None = None
) -> Outcome:
    """POST a V2 JSON request (with the ``timeout`` parameter when given)."""
    extra = {"parameters": {"timeout": timeout_us}} if timeout_us is not None else {}
    reply = post_json(server.http_url, f"/v2/models/{model}/infer", echo_body(values, **extra))
    if reply.status != 200:
        return Outcome(str(reply.status), reply.error(), reply.headers)
    return Outcome("200", headers=reply.headers, values=json_array(reply, "Y"))


def stub_echo(
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    values: np.ndarray,
    timeout_us: int | None = None,
    deadline_s: float = JOIN_TIMEOUT_S,
) -> Outcome:
    """ModelInfer with Turnout's own stub, under a gRPC deadline of ``deadline_s``."""
    parameters = {"timeout": pb.InferParameter(int64_param=timeout_us)} if timeout_us else {}
    try:
        response = stub.ModelInfer(
            echo_message(model, values, parameters=parameters), timeout=deadline_s
        )
    except grpc.RpcError as error:
        return Outcome(error.code().name, error.details() or "")
    return Outcome("OK", values=raw_outputs(response)["Y"])


def triton_grpc_echo(
    server: TurnoutProcess,
    model: str,
    values: np.ndarray,
    timeout_us: int | None = None,
    deadline_s: float = JOIN_TIMEOUT_S,
) -> Outcome:
    """Triton's gRPC client (``timeout`` is its microseconds parameter, ``client_timeout`` the
    gRPC deadline)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput("X", list(values.shape), "INT64")
        tensor.set_data_from_numpy(values)
        result = client.infer(model, [tensor], timeout=timeout_us, client_timeout=deadline_s)
    except InferenceServerException as error:
        return Outcome(str(error.status()).removeprefix("StatusCode."), error.message() or "")
    finally:
        client.close()
    return Outcome("OK", values=result.as_numpy("Y"))


def triton_http_echo(
    server: TurnoutProcess, model: str, values: np.ndarray, timeout_us: int | None = None
) -> Outcome:
    """Triton's HTTP client."""
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=JOIN_TIMEOUT_S)
    try:
        tensor = httpclient.InferInput("X", list(values.shape), "INT64")
        tensor.set_data_from_numpy(values, binary_data=True)
        result = client.infer(model, [tensor], timeout=timeout_us)
    except InferenceServerException as error:
        return Outcome(str(error.status()), error.message() or "")
    finally:
        client.close()
    return Outcome("200", values=result.as_numpy("Y"))
