"""The process end to end: ``turnout demo``, config errors at start-up, graceful and forced
shutdown, and a repository with a model that cannot load. Each test that stops a server starts
its own, with its own folder; the shared server is never stopped here."""

import http.client
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from tests.support.e2e import (
    assert_mlp_outputs,
    assert_serving,
    inflight,
    mlp_json_request,
    mlp_reference,
    mlp_rows,
    scrape,
    typed_tensor,
)
from tests.support.e2e_models import write_garbage_model
from tests.support.onnx_models import slow_counter, write_model
from tests.support.polling import wait_for
from tests.support.rawhttp import Reply, assert_no_leak, post_json, request
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc

TURNOUT = Path(sys.executable).parent / "turnout"
EXIT_USAGE = 2
EXIT_FORCED = 1
# About half a second of the slow model's loop on one core of the development machines.
DRAIN_ITERATIONS = 400_000
# Far longer than any test waits: a request that is still running when the server is forced out.
ENDLESS_ITERATIONS = 200_000_000
PROMPTLY_S = 5.0


def _slow_body(iterations: int) -> dict[str, Any]:
    return {
        "inputs": [{"name": "ITERATIONS", "datatype": "INT64", "shape": [1], "data": [iterations]}]
    }


class _InThread:
    """Runs ``call`` in a thread, keeping its result or the exception it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._call = call
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as error:  # handed to the test to judge
            self.error = error

    def join(self, timeout_s: float = 30.0) -> Any:
        """Wait for the call; its result (re-raising what it raised)."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the call did not finish"
        if self.error is not None:
            raise self.error
        return self.result

    def finished(self) -> bool:
        """Whether the call has returned or raised."""
        return not self._thread.is_alive()


def _status_or_none(process: TurnoutProcess, path: str) -> int | None:
    """The status of ``GET path``, or None when the server no longer takes connections."""
    try:
        return request(process.http_url, "GET", path).status
    except (OSError, http.client.HTTPException):
        return None


def _post_or_none(process: TurnoutProcess, path: str, document: Any) -> Reply | None:
    """``POST path``, or None when the server no longer takes connections."""
    try:
        return post_json(process.http_url, path, document)
    except (OSError, http.client.HTTPException):
        return None


def _slow_repository(root: Path) -> Path:
    write_model(slow_counter(), root / "slow" / "1" / "model.onnx")
    return root


# --- turnout demo ---------------------------------------------------------------------------------


def test_demo_writes_a_servable_example(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    done = subprocess.run(
        [str(TURNOUT), "demo", str(demo)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "turnout serve --config" in done.stdout
    models = demo / "models"
    for version in ("1", "2"):
        assert (models / "mlp" / version / "model.onnx").is_file()
    with np.load(models / "mlp" / "reference.npz") as reference:
        assert reference["INPUT0"].shape == (2000, 64)
        assert reference["INPUT0"].dtype == np.float32
    config = yaml.safe_load((demo / "turnout.yaml").read_text())
    assert [(m["name"], str(m["version"])) for m in config["models"]] == [
        ("mlp", "1"),
        ("mlp", "2"),
    ]
    assert config["routes"]["mlp"] == {"policy": "canary", "weights": {"1": 90, "2": 10}}

    with TurnoutProcess(
        ["--config", str(demo / "turnout.yaml")], tmp_path / "server", program=[str(TURNOUT)]
    ) as process:
        rows = mlp_rows(5, seed=500)
        for path, pinned in (
            ("/v2/models/mlp/infer", None),
            ("/v2/models/mlp/versions/1/infer", "1"),
            ("/v2/models/mlp/versions/2/infer", "2"),
        ):
            reply = post_json(process.http_url, path, mlp_json_request(rows))
            assert reply.status == 200, reply
            document = reply.json()
            version = document["model_version"]
            assert version == pinned if pinned else version in ("1", "2")
            outputs = {
                o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in document["outputs"]
            }
            assert_mlp_outputs(outputs, mlp_reference(models, version, rows))

        client = grpcclient.InferenceServerClient(process.grpc_url)
        try:
            tensor = grpcclient.InferInput("INPUT0", [5, 64], "FP32")
            tensor.set_data_from_numpy(rows)
            result = client.infer("mlp", [tensor])
            served = result.get_response().model_version
            assert served in ("1", "2")
            got = {name: result.as_numpy(name) for name in ("OUTPUT0", "LABEL")}
            assert_mlp_outputs(got, mlp_reference(models, served, rows))
        finally:
            client.close()
        assert process.stop() == 0, process.logs()
    assert "Traceback" not in process.logs()


# --- invalid configs and command lines ------------------------------------------------------------


@dataclass(frozen=True)
class ConfigCase:
    """A ``turnout serve`` that must exit 2 naming each problem (``{dir}`` in ``argv`` is the
    case's folder, ``{config}`` its turnout.yaml)."""

    name: str
    config: str | None
    fragments: tuple[str, ...]
    argv: tuple[str, ...] = ("--config", "{config}")
    files: dict[str, str] = field(default_factory=dict)


CONFIG_CASES = [
    ConfigCase(
        "every-bad-field",
        """
server:
  http: {port: 70000}
  max_request_bytes: -1
  bogus: 1
models:
  - name: "bad name!"
    version: 0
    path: missing.onnx
    device: tpu
    instances: 0
  - name: mlp
    version: 1
    path: model.onnx
    surprise: true
""",
        (
            "server.http.port",
            "server.max_request_bytes",
            "server.bogus: unknown field",
            "models[0].name",
            "models[0].version: must be a positive integer",
            "models[0].path: file not found",
            "models[0].device",
            "models[0].instances",
            "models[1].surprise: unknown field",
        ),
    ),
    ConfigCase("no-models", "server: {}\n", ("models: required",)),
    ConfigCase("empty-models", "models: []\n", ("models",)),
    ConfigCase(
        "duplicate-version",
        "models:\n  - {name: mlp, version: 1, path: model.onnx}\n"
        "  - {name: mlp, version: 1, path: model.onnx}\n",
        ("mlp version 1 is already models[0]",),
    ),
    # BAD_INPUTS row 35: YAML tags that construct objects are refused by the safe loader.
    ConfigCase("python-tag", '!!python/object/apply:os.system ["echo pwned"]\n', ("constructor",)),
    ConfigCase("yaml-syntax", "models: [\n", ("line",)),
    ConfigCase("not-a-mapping", "- just\n- a list\n", ("must be a mapping",)),
    ConfigCase("config-missing", None, ("cannot read",)),
    ConfigCase(
        "http-port-flag",
        "models:\n  - {name: mlp, version: 1, path: model.onnx}\n",
        ("--http-port", "70000 is not a port number"),
        ("--config", "{config}", "--http-port", "70000"),
    ),
    ConfigCase("no-source", None, ("--config", "--model-repository"), ()),
    ConfigCase(
        "repository-missing", None, ("not a directory",), ("--model-repository", "{dir}/nothing")
    ),
    ConfigCase(
        "repository-bad-settings",
        None,
        ("instances",),
        ("--model-repository", "{dir}/repository"),
        {"repository/mlp/turnout.yaml": "instances: 0\n", "repository/mlp/1/model.onnx": ""},
    ),
]


@dataclass(frozen=True)
class Exited:
    """How a command ended."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def config_runs(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exited]:
    """Every config case's ``turnout serve``, started together so that their interpreters'
    start-up overlaps, by case name."""
    model = repository / "mlp" / "1" / "model.onnx"
    running: dict[str, subprocess.Popen[str]] = {}
    for case in CONFIG_CASES:
        folder = tmp_path_factory.mktemp(f"config-{case.name}")
        shutil.copy(model, folder / "model.onnx")
        if case.config is not None:
            (folder / "turnout.yaml").write_text(case.config)
        for relative, text in case.files.items():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.name == "model.onnx":
                shutil.copy(model, target)
            else:
                target.write_text(text)
        argv = [a.format(dir=folder, config=folder / "turnout.yaml") for a in case.argv]
        running[case.name] = subprocess.Popen(
            [str(TURNOUT), "serve", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finished = {}
    try:
        for name, process in running.items():
            stdout, stderr = process.communicate(timeout=60)
            finished[name] = Exited(process.returncode, stdout, stderr)
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.communicate()
    return finished


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CONFIG_CASES])
def test_invalid_config_exits_2_naming_the_field(
    config_runs: dict[str, Exited], case: ConfigCase
) -> None:
    exited = config_runs[case.name]
    assert exited.returncode == EXIT_USAGE, exited
    for fragment in case.fragments:
        assert fragment in exited.stderr, (fragment, exited.stderr)
    assert "Traceback" not in exited.stderr + exited.stdout
    assert "pwned" not in exited.stdout


# --- shutdown -------------------------------------------------------------------------------------


def _grpc_slow(address: str, iterations: int) -> pb.ModelInferResponse:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        message = pb.ModelInferRequest(
            model_name="slow",
            inputs=[typed_tensor("ITERATIONS", "INT64", np.array([iterations], np.int64))],
        )
        response: pb.ModelInferResponse = stub.ModelInfer(message, timeout=60)
        return response


def _grpc_code(
    address: str, call: Callable[[pb_grpc.GRPCInferenceServiceStub], Any]
) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        try:
            call(pb_grpc.GRPCInferenceServiceStub(channel))
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    return grpc.StatusCode.OK


def test_sigterm_drains_requests_in_flight(tmp_path: Path) -> None:
    """SIGTERM with one request running and one queued behind it (the model has one instance):
    readiness goes (and stays) not ready, liveness never reports anything but 200, new requests
    are refused, both accepted requests are answered in full, and the process exits 0.

    Once the listeners close, probes cannot connect at all; that counts as not ready (None)."""
    repository = _slow_repository(tmp_path / "models")
    with TurnoutProcess(["--model-repository", str(repository)], tmp_path / "server") as process:
        over_http = _InThread(
            lambda: post_json(
                process.http_url, "/v2/models/slow/infer", _slow_body(DRAIN_ITERATIONS)
            )
        )
        over_grpc = _InThread(lambda: _grpc_slow(process.grpc_url, DRAIN_ITERATIONS))
        wait_for(
            lambda: inflight(process, "http") == 1 and inflight(process, "grpc") == 1,
            "one request in flight on each protocol",
        )
        process.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "stop signal" in process.logs(), "the server to take the signal")

        readiness: list[int | None] = []
        liveness: list[int | None] = []

        def not_ready() -> bool:
            readiness.append(_status_or_none(process, "/v2/health/ready"))
            liveness.append(_status_or_none(process, "/v2/health/live"))
            return readiness[-1] != 200

        wait_for(not_ready, "readiness to go")
        in_drain = not (over_http.finished() and over_grpc.finished())
        fresh = _post_or_none(process, "/v2/models/slow/infer", _slow_body(1))
        fresh_grpc = _grpc_code(
            process.grpc_url,
            lambda stub: stub.ModelInfer(
                pb.ModelInferRequest(
                    model_name="slow",
                    inputs=[typed_tensor("ITERATIONS", "INT64", np.array([1], np.int64))],
                ),
                timeout=5,
            ),
        )
        readiness.append(_status_or_none(process, "/v2/health/ready"))

        reply: Reply = over_http.join()
        assert reply.status == 200, reply
        assert reply.json()["outputs"][0]["data"] == [DRAIN_ITERATIONS]
        response = over_grpc.join()
        assert list(np.frombuffer(response.raw_output_contents[0], "<i8")) == [DRAIN_ITERATIONS]
        assert process.process.wait(30) == 0, process.logs()

    first_down = next(i for i, status in enumerate(readiness) if status != 200)
    assert set(readiness[first_down:]) <= {503, None}, readiness
    assert in_drain, "the requests finished before the drain could be observed"
    assert set(liveness) <= {200, None}, liveness
    if fresh is not None:
        assert fresh.status == 503, fresh
        assert "shutting down" in fresh.error()
    assert fresh_grpc == grpc.StatusCode.UNAVAILABLE
    logs = process.logs()
    assert "stopped" in logs
    assert "Traceback" not in logs, logs


def test_second_signal_forces_exit(tmp_path: Path) -> None:
    repository = _slow_repository(tmp_path / "models")
    with TurnoutProcess(["--model-repository", str(repository)], tmp_path / "server") as process:
        endless = _InThread(
            lambda: post_json(
                process.http_url, "/v2/models/slow/infer", _slow_body(ENDLESS_ITERATIONS)
            )
        )
        wait_for(lambda: inflight(process, "http") == 1, "the endless request in flight")
        process.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "stop signal" in process.logs(), "the server to take the first signal")
        assert process.process.poll() is None, "the drain must wait for the request in flight"
        forced_at = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        status = process.process.wait(30)
        took = time.monotonic() - forced_at
    assert status == EXIT_FORCED, (status, process.logs())
    assert took < PROMPTLY_S, took
    with pytest.raises((ConnectionError, TimeoutError)):  # the abandoned request's connection
        endless.join()


# --- a model that cannot load ---------------------------------------------------------------------


def test_model_that_fails_to_load(repository: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_garbage_model(models / "broken" / "1" / "model.onnx")
    (models / "mlp" / "1").mkdir(parents=True)
    shutil.copy(repository / "mlp" / "1" / "model.onnx", models / "mlp" / "1" / "model.onnx")
    with TurnoutProcess(["--model-repository", str(models)], tmp_path / "server") as process:
        logs = process.logs()
        assert "'broken' version 1 failed to load" in logs, logs

        assert _status_or_none(process, "/v2/health/live") == 200
        assert _status_or_none(process, "/v2/health/ready") == 503
        assert _status_or_none(process, "/v2/models/broken/ready") == 503
        assert _status_or_none(process, "/v2/models/mlp/ready") == 200

        reply = post_json(process.http_url, "/v2/models/broken/infer", {"inputs": []})
        assert reply.status == 503, reply
        message = reply.error()
        assert "broken" in message
        assert str(models) not in message
        metadata = request(process.http_url, "GET", "/v2/models/broken")
        assert metadata.status == 503, metadata
        assert "broken" in metadata.error()

        with grpc.insecure_channel(process.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
            assert not stub.ModelReady(pb.ModelReadyRequest(name="broken"), timeout=10).ready
            assert stub.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=10).ready
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(pb.ModelInferRequest(model_name="broken"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "broken" in caught.value.details()
            assert_no_leak(caught.value.details())
            rows = mlp_rows(3, seed=600)
            good = pb.ModelInferRequest(
                model_name="mlp", inputs=[typed_tensor("INPUT0", "FP32", rows)]
            )
            response = stub.ModelInfer(good, timeout=10)
            assert response.model_version == "1"
            assert np.frombuffer(response.raw_output_contents[1], "<i8").tolist() == (
                mlp_reference(repository, "1", rows)["LABEL"].tolist()
            )
        assert_serving(process, repository, version="1")

        metrics = scrape(process)
        assert metrics.value("turnout_model_ready", endpoint="broken", version="1") == 0
        assert metrics.value("turnout_model_ready", endpoint="mlp", version="1") == 1
        for protocol in ("http", "grpc"):
            labels = {"endpoint": "broken", "version": "1", "protocol": protocol}
            assert metrics.value("turnout_requests_total", status="model_not_ready", **labels) == 1
        assert process.stop(signal.SIGINT) == 0, process.logs()
    assert "Traceback" not in process.logs()
