"""Helpers for the end-to-end tests of routes, the admin API, rewards and the repository API: an
admin client that carries a bearer token, mlp inference over a kept-alive HTTP connection and
over gRPC that tells which version answered, rewards over both transports, the binomial bounds
the statistical checks use, and models the shared test repository lacks."""

import http.client
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.support.onnx_models import write_model
from tests.support.rawhttp import TIMEOUT_S, Reply, request
from tests.support.scheduling import JOIN_TIMEOUT_S, raw_outputs
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.protos import turnout_pb2 as turnout_pb
from turnout.protos import turnout_pb2_grpc as turnout_grpc
from turnout.server.demo import build_mlp, finish_model

ADMIN_TOKEN = "e2e-admin-token"
TOKEN_VARIABLE = "TURNOUT_ADMIN_TOKEN"
ROUTING_KEY = "x-routing-key"
MLP_FEATURES = 64
# A kept-alive connection idle longer than this is reopened first: uvicorn closes idle ones
# after 5 s, and a request must never race that close.
IDLE_REOPEN_S = 2.0
GRPC_TIMEOUT_S = 30.0
# How many standard deviations the statistical checks allow: a binomial count outside them
# happens about once in 1.7 million runs.
SIGMAS = 5.0


def admin_env(token: str = ADMIN_TOKEN) -> dict[str, str]:
    """This process's environment with the admin token set (the admin API on, named "env")."""
    return {**os.environ, TOKEN_VARIABLE: token}


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of ``token``."""
    return {"Authorization": f"Bearer {token}"}


def binomial_bounds(trials: int, probability: float, sigmas: float = SIGMAS) -> tuple[float, float]:
    """The count of successes a binomial(trials, probability) stays within, ``sigmas`` standard
    deviations either side of its mean."""
    mean = trials * probability
    spread = sigmas * math.sqrt(trials * probability * (1 - probability))
    return mean - spread, mean + spread


# --- the admin API --------------------------------------------------------------------------------


class Admin:
    """Calls of a server's admin and repository API with one token."""

    def __init__(self, server: TurnoutProcess, token: str = ADMIN_TOKEN) -> None:
        self.server = server
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        document: Any = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        """One call with the token (``document`` sent as JSON, or ``body`` as it is)."""
        merged = {**bearer(self.token), **(headers or {})}
        if document is not None:
            body = json.dumps(document).encode()
        if body is not None:
            merged.setdefault("Content-Type", "application/json")
        return request(self.server.http_url, method, path, body, merged)

    def ok(self, method: str, path: str, document: Any = None) -> Any:
        """The JSON answer of a call that must succeed."""
        reply = self.call(method, path, document)
        assert reply.status == 200, reply
        return reply.json()

    def route(self, endpoint: str) -> dict[str, Any]:
        """``GET /admin/routes/{endpoint}``: the route and its live state."""
        described: dict[str, Any] = self.ok("GET", f"/admin/routes/{endpoint}")
        return described

    def set_route(self, endpoint: str, route: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /admin/routes/{endpoint}``, which must be accepted."""
        described: dict[str, Any] = self.ok("PUT", f"/admin/routes/{endpoint}", route)
        return described

    def promote(self, endpoint: str) -> dict[str, Any]:
        """``POST /admin/routes/{endpoint}/promote``, which must be accepted."""
        described: dict[str, Any] = self.ok("POST", f"/admin/routes/{endpoint}/promote")
        return described

    def rollback(self, endpoint: str) -> dict[str, Any]:
        """``POST /admin/routes/{endpoint}/rollback``, which must be accepted."""
        described: dict[str, Any] = self.ok("POST", f"/admin/routes/{endpoint}/rollback")
        return described

    def report(self, endpoint: str) -> dict[str, Any]:
        """``GET /admin/routes/{endpoint}/report``: the A/B readout."""
        report: dict[str, Any] = self.ok("GET", f"/admin/routes/{endpoint}/report")
        return report

    def audit(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The latest audit entries, oldest first."""
        entries: list[dict[str, Any]] = self.ok("GET", f"/admin/audit?limit={limit}")["entries"]
        return entries

    def index(self) -> list[dict[str, str]]:
        """``POST /v2/repository/index``."""
        index: list[dict[str, str]] = self.ok("POST", "/v2/repository/index")
        return index

    def states(self, model: str) -> dict[str, str]:
        """The state of each version of ``model`` the repository index lists."""
        return {item["version"]: item["state"] for item in self.index() if item["name"] == model}

    def load(self, model: str, version: Any) -> Reply:
        """``POST /v2/repository/models/{model}/load`` of ``version``."""
        return self.call(
            "POST", f"/v2/repository/models/{model}/load", {"parameters": {"version": version}}
        )

    def unload(self, model: str, version: Any) -> Reply:
        """``POST /v2/repository/models/{model}/unload`` of ``version``."""
        return self.call(
            "POST", f"/v2/repository/models/{model}/unload", {"parameters": {"version": version}}
        )


# --- inference ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful mlp inference: the version that served it, the id the response carried and
    the outputs."""

    version: str
    request_id: str
    outputs: dict[str, np.ndarray]


class HttpSession:
    """One kept-alive HTTP/1.1 connection for many requests from one thread (reopened when it
    has been idle long enough for the server to close it)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._host, self._port = host, int(port)
        self._connection: http.client.HTTPConnection | None = None
        self._last_used = 0.0

    def post(self, path: str, document: Any, headers: Mapping[str, str] | None = None) -> Reply:
        """POST ``document`` as JSON and read the whole reply."""
        if self._connection is None or time.monotonic() - self._last_used > IDLE_REOPEN_S:
            self.close()
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=TIMEOUT_S)
        merged = {"Content-Type": "application/json", **(headers or {})}
        try:
            self._connection.request("POST", path, json.dumps(document).encode(), merged)
            response = self._connection.getresponse()
            reply = Reply(
                response.status,
                {name.lower(): value for name, value in response.getheaders()},
                response.read(),
            )
        except BaseException:
            self.close()
            raise
        self._last_used = time.monotonic()
        if reply.headers.get("connection", "").lower() == "close":
            self.close()
        return reply

    def close(self) -> None:
        """Close the connection (the next request opens another)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> "HttpSession":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def mlp_body(
    rows: np.ndarray, request_id: str | None = None, parameters: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A V2 JSON request of an mlp endpoint for ``rows``."""
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "INPUT0",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.reshape(-1).tolist(),
            }
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    if parameters:
        body["parameters"] = dict(parameters)
    return body


def infer_path(endpoint: str, version: str | None = None) -> str:
    """The HTTP infer path of ``endpoint``, pinned to ``version`` when given."""
    pinned = f"/versions/{version}" if version else ""
    return f"/v2/models/{endpoint}{pinned}/infer"


def http_infer(
    session: HttpSession,
    endpoint: str,
    rows: np.ndarray,
    *,
    version: str | None = None,
    key: str | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Reply:
    """One V2 JSON inference of an mlp endpoint (with ``x-routing-key`` when ``key`` is given)."""
    headers = {ROUTING_KEY: key} if key is not None else {}
    return session.post(
        infer_path(endpoint, version), mlp_body(rows, request_id, parameters), headers
    )


def http_answer(reply: Reply) -> Answer:
    """The answer of a successful JSON inference reply."""
    assert reply.status == 200, reply
    document = reply.json()
    outputs = {}
    for output in document["outputs"]:
        dtype = np.float32 if output["datatype"] == "FP32" else np.int64
        outputs[output["name"]] = np.asarray(output["data"], dtype=dtype).reshape(output["shape"])
    return Answer(document["model_version"], document["id"], outputs)


def grpc_message(
    endpoint: str,
    rows: np.ndarray,
    version: str = "",
    request_id: str = "",
    parameters: Mapping[str, pb.InferParameter] | None = None,
) -> pb.ModelInferRequest:
    """A gRPC inference request of an mlp endpoint for ``rows``, input sent raw."""
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="INPUT0", datatype="FP32", shape=list(rows.shape)
    )
    return pb.ModelInferRequest(
        model_name=endpoint,
        model_version=version,
        id=request_id,
        inputs=[tensor],
        raw_input_contents=[np.ascontiguousarray(rows, dtype="<f4").tobytes()],
        parameters=parameters or {},
    )


def grpc_infer(
    stub: pb_grpc.GRPCInferenceServiceStub,
    endpoint: str,
    rows: np.ndarray,
    *,
    version: str = "",
    key: str | None = None,
    request_id: str = "",
    parameters: Mapping[str, pb.InferParameter] | None = None,
) -> Answer:
    """One gRPC inference of an mlp endpoint (``x-routing-key`` metadata when ``key`` is given);
    raises grpc.RpcError when it fails."""
    metadata = [(ROUTING_KEY, key)] if key is not None else None
    response = stub.ModelInfer(
        grpc_message(endpoint, rows, version, request_id, parameters),
        timeout=GRPC_TIMEOUT_S,
        metadata=metadata,
    )
    assert response.model_name == endpoint, response
    return Answer(response.model_version, response.id, raw_outputs(response))


def string_parameter(value: str) -> pb.InferParameter:
    """A gRPC string parameter."""
    return pb.InferParameter(string_param=value)


# --- rewards --------------------------------------------------------------------------------------


def http_feedback(address: str, endpoint: str, document: Mapping[str, Any]) -> Reply:
    """``POST /v2/models/{endpoint}/feedback`` of ``document`` (no token: it is not an admin
    call)."""
    body = json.dumps(dict(document)).encode()
    return request(
        address,
        "POST",
        f"/v2/models/{endpoint}/feedback",
        body,
        {"Content-Type": "application/json"},
    )


def grpc_feedback(
    stub: turnout_grpc.FeedbackStub, endpoint: str, request_id: str, reward: float
) -> tuple[str, str]:
    """``turnout.v1.Feedback/Reward``: the status name and, when OK, the version credited (else
    the error's details)."""
    try:
        response = stub.Reward(
            turnout_pb.RewardRequest(model_name=endpoint, request_id=request_id, reward=reward),
            timeout=GRPC_TIMEOUT_S,
        )
    except grpc.RpcError as error:
        return error.code().name, error.details() or ""
    assert response.model_name == endpoint, response
    assert response.request_id == request_id, response
    return "OK", response.model_version


# --- models ---------------------------------------------------------------------------------------


def write_mlp(path: Path, seed: int) -> Path:
    """The demo classifier with weights from ``seed`` at ``path``; returns the path."""
    return write_model(build_mlp(seed), path)


def mlp_inputs(batch: int, seed: int) -> np.ndarray:
    """``batch`` ordinary rows of INPUT0 (standard normal, so few loop steps in a slow mlp)."""
    generator = np.random.default_rng(seed)
    return generator.standard_normal((batch, MLP_FEATURES)).astype(np.float32)


def failing_mlp(seed: int, divisor: int = 7) -> onnx.ModelProto:
    """The demo classifier's signature (``INPUT0`` [batch, 64] FP32 → ``OUTPUT0``, ``LABEL``)
    whose run fails inside ONNX Runtime unless the batch is a multiple of ``divisor``: it also
    reshapes ``INPUT0`` to [-1, divisor], which the 64 * batch values fit only then. Load it with
    warm-up off (warm-up runs one row)."""
    mlp = build_mlp(seed)
    graph = mlp.graph
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name == "OUTPUT0":
                node.output[index] = "probabilities"
        for index, name in enumerate(node.input):
            if name == "OUTPUT0":
                node.input[index] = "probabilities"
    graph.node.extend(
        [
            helper.make_node("Reshape", ["INPUT0", "misfit_shape"], ["misfit"]),
            helper.make_node("ReduceSum", ["misfit"], ["misfit_sum"], keepdims=0),
            helper.make_node("Mul", ["misfit_sum", "nothing"], ["misfit_zero"]),
            helper.make_node("Add", ["probabilities", "misfit_zero"], ["OUTPUT0"]),
        ]
    )
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1, divisor], dtype=np.int64), "misfit_shape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "nothing"),
        ]
    )
    graph.name = "failing_mlp"
    return finish_model(graph)


# --- steady load ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connections:
    """One client thread's own kept-alive HTTP connection and gRPC stub."""

    http: HttpSession
    grpc: pb_grpc.GRPCInferenceServiceStub


Send = Callable[[Connections, np.ndarray], Answer]


@dataclass(frozen=True, slots=True)
class Sent:
    """One request of a load: which client sent it, when it was sent and answered (monotonic),
    its rows, and what came back (an answer, or the error)."""

    client: str
    started: float
    finished: float
    rows: np.ndarray
    answer: Answer | None
    error: str = ""


def http_client(endpoint: str) -> Send:
    """Unpinned JSON requests of ``endpoint`` over HTTP."""
    return lambda connections, rows: http_answer(http_infer(connections.http, endpoint, rows))


def grpc_client(endpoint: str) -> Send:
    """Unpinned requests of ``endpoint`` over gRPC."""
    return lambda connections, rows: grpc_infer(connections.grpc, endpoint, rows)


class Load:
    """Client threads, each sending one request after another (the next as soon as the last is
    answered) until stopped; every request and its outcome is kept, failures included."""

    def __init__(
        self,
        server: TurnoutProcess,
        clients: Mapping[str, Send],
        rows: Callable[[int], np.ndarray],
    ) -> None:
        """``rows(i)`` gives the rows the ``i``-th client sends."""
        self._server = server
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent: list[Sent] = []
        self.clients = tuple(clients)
        self._threads = [
            threading.Thread(target=self._run, args=(name, send, rows(index)), daemon=True)
            for index, (name, send) in enumerate(clients.items())
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, name: str, send: Send, rows: np.ndarray) -> None:
        with (
            HttpSession(self._server.http_url) as session,
            grpc.insecure_channel(self._server.grpc_url) as channel,
        ):
            connections = Connections(session, pb_grpc.GRPCInferenceServiceStub(channel))
            while not self._stop.is_set():
                started = time.monotonic()
                answer: Answer | None = None
                error = ""
                try:
                    answer = send(connections, rows)
                except Exception as failure:  # a failure is a finding: keep it for the test
                    error = repr(failure)
                with self._lock:
                    self._sent.append(Sent(name, started, time.monotonic(), rows, answer, error))

    def sent(self) -> list[Sent]:
        """Every request answered so far."""
        with self._lock:
            return list(self._sent)

    def answered_since(self, since: float) -> dict[str, int]:
        """How many requests each client sent after ``since`` and got answered."""
        counts = dict.fromkeys(self.clients, 0)
        for sent in self.sent():
            if sent.started > since:
                counts[sent.client] += 1
        return counts

    def stop(self) -> list[Sent]:
        """Stop the threads and return every request they sent."""
        self._stop.set()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
            assert not thread.is_alive(), "a client thread did not stop"
        return self.sent()

    def __enter__(self) -> "Load":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
