"""The load generator's clients: one inference call (and one reward) over gRPC, HTTP with JSON
tensors or HTTP with binary tensors, on asyncio, with requests encoded before the run so that the
client spends its time sending, not building.

Every call ends in an Outcome: the status code as the protocol says it (gRPC code names such as
``UNAVAILABLE``, HTTP statuses such as ``503``; ``OK``/``200`` for success; ``CONNECTION`` and
``TIMEOUT`` for failures with no answer) and the version that served it.
"""

import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
from google.protobuf.message import DecodeError

from turnout.loadtests.grpc_channel import GrpcChannel, Reply
from turnout.loadtests.http1 import HttpError, HttpPool
from turnout.protos import inference_pb2 as pb
from turnout.protos import turnout_pb2 as turnout_pb

ROUTING_KEY = "x-routing-key"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
REWARD = "/turnout.v1.Feedback/Reward"
CALL_TIMEOUT_S = 30.0
# HTTP/1.1 connections per process: beyond, requests wait for one (and the wait is in their
# latency), rather than the client running out of file descriptors.
MAX_CONNECTIONS = 1000
DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
PROTOCOLS = ("grpc", "http", "http-binary")


class UsageError(ValueError):
    """A target, scenario or data set that cannot be used (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: ``grpc://HOST:PORT`` or ``http://HOST:PORT``."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Target":
        """The target a URL names; UsageError for anything else."""
        parts = urllib.parse.urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("grpc", "http") or not parts.hostname or port is None:
            raise UsageError(f"--target {text!r}: expected grpc://HOST:PORT or http://HOST:PORT")
        return cls(parts.scheme, parts.hostname, port)

    @property
    def address(self) -> str:
        """``HOST:PORT``."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input as the server's metadata gives it."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call ended."""

    ok: bool
    code: str
    version: str | None = None
    # time.perf_counter() when the answer was whole (or the failure known): where its latency
    # ends, before the event loop gets round to the caller.
    answered_at: float = field(default_factory=time.perf_counter)


class Client(Protocol):
    """Sends prepared requests to one target."""

    async def infer(self, request: object, request_id: str, routing_key: str | None) -> Outcome: ...

    async def reward(self, endpoint: str, request_id: str, reward: float) -> Outcome: ...

    async def close(self) -> None: ...


def prepare(protocol: str, endpoint: str, rows: Sequence[dict[str, np.ndarray]]) -> list[object]:
    """One request per entry of ``rows`` (input name → array), encoded for ``protocol``."""
    if protocol == "grpc":
        return [_grpc_request(endpoint, inputs).SerializeToString() for inputs in rows]
    binary = protocol == "http-binary"
    return [(endpoint, _http_request(inputs, binary)) for inputs in rows]


def _grpc_request(endpoint: str, inputs: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=endpoint)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=_datatype(array), shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    return request


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A V2 inference request, encoded but for its id (added per call)."""

    header: bytes  # the JSON header without its id: ``{"inputs": ...}``
    binary: bytes  # the tensors' bytes after the header, or b"" for JSON tensors


def _http_request(inputs: dict[str, np.ndarray], binary: bool) -> HttpRequest:
    tensors = []
    raw = []
    for name, array in inputs.items():
        tensor: dict[str, Any] = {"name": name, "datatype": _datatype(array), "shape": array.shape}
        if binary:
            data = np.ascontiguousarray(array).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    header: dict[str, Any] = {"inputs": tensors}
    if binary:
        header["parameters"] = {"binary_data_output": True}
    return HttpRequest(orjson.dumps(header), b"".join(raw))


def _datatype(array: np.ndarray) -> str:
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise UsageError(f"inputs of dtype {array.dtype} cannot be sent")


class GrpcClient:
    """Unary calls on one HTTP/2 connection through the load test's own gRPC channel, which
    costs far less per call than grpc.aio (``grpc_channel``, BENCHMARKS.md issue 6)."""

    def __init__(self, target: Target) -> None:
        self._channel = GrpcChannel(target.host, target.port)

    async def infer(self, request: object, request_id: str, routing_key: str | None) -> Outcome:
        """Send one prepared ModelInferRequest (serialized, without its id)."""
        assert isinstance(request, bytes)
        # Serialized protobuf messages merge when concatenated: this sets the id.
        message = request + pb.ModelInferRequest(id=request_id).SerializeToString()
        metadata = ((ROUTING_KEY, routing_key),) if routing_key else ()
        reply = await self._channel.unary(MODEL_INFER, message, metadata, CALL_TIMEOUT_S)
        return _grpc_outcome(reply, pb.ModelInferResponse)

    async def reward(self, endpoint: str, request_id: str, reward: float) -> Outcome:
        """Send a reward for a request."""
        message = turnout_pb.RewardRequest(
            model_name=endpoint, request_id=request_id, reward=reward
        )
        reply = await self._channel.unary(
            REWARD, message.SerializeToString(), timeout_s=CALL_TIMEOUT_S
        )
        return _grpc_outcome(reply, turnout_pb.RewardResponse)

    async def close(self) -> None:
        """Close the connection."""
        await self._channel.close()


def _grpc_outcome(
    reply: Reply, answer_type: type[pb.ModelInferResponse] | type[turnout_pb.RewardResponse]
) -> Outcome:
    if reply.code != "OK" or reply.message is None:
        return Outcome(False, reply.code, answered_at=reply.received_at)
    try:
        answer = answer_type.FromString(reply.message)
    except DecodeError:
        return Outcome(False, "BAD_RESPONSE", answered_at=reply.received_at)
    return Outcome(True, "OK", answer.model_version or None, reply.received_at)


class HttpClient:
    """HTTP/1.1 keep-alive connections, one per call in flight up to MAX_CONNECTIONS."""

    def __init__(self, target: Target, endpoint_paths: dict[str, str]) -> None:
        self._pool = HttpPool(target.host, target.port, MAX_CONNECTIONS)
        self._paths = endpoint_paths

    async def infer(self, request: object, request_id: str, routing_key: str | None) -> Outcome:
        """Send one prepared request (its endpoint is the first item of ``request``)."""
        assert isinstance(request, tuple)
        endpoint, prepared = request
        assert isinstance(prepared, HttpRequest)
        header = b'{"id":' + orjson.dumps(request_id) + b"," + prepared.header[1:]
        if prepared.binary:
            headers = [
                ("Content-Type", "application/octet-stream"),
                ("Inference-Header-Content-Length", str(len(header))),
            ]
        else:
            headers = [("Content-Type", "application/json")]
        if routing_key:
            headers.append((ROUTING_KEY, routing_key))
        try:
            response = await self._pool.request(
                "POST", self._paths[endpoint], headers, header + prepared.binary, CALL_TIMEOUT_S
            )
            if response.status != 200:
                return Outcome(False, str(response.status), answered_at=response.received_at)
            length = response.headers.get("inference-header-content-length")
            answer = orjson.loads(response.body[: int(length)] if length else response.body)
        except TimeoutError:
            return Outcome(False, "TIMEOUT")
        except HttpError:
            return Outcome(False, "CONNECTION")
        except (orjson.JSONDecodeError, ValueError):
            return Outcome(False, "BAD_RESPONSE")
        return Outcome(True, "200", _model_version(answer), response.received_at)

    async def reward(self, endpoint: str, request_id: str, reward: float) -> Outcome:
        """Send a reward for a request."""
        path = f"/v2/models/{urllib.parse.quote(endpoint, safe='')}/feedback"
        body = orjson.dumps({"request_id": request_id, "reward": reward})
        try:
            response = await self._pool.request(
                "POST", path, [("Content-Type", "application/json")], body, CALL_TIMEOUT_S
            )
            if response.status != 200:
                return Outcome(False, str(response.status))
            answer = orjson.loads(response.body)
        except TimeoutError:
            return Outcome(False, "TIMEOUT")
        except HttpError:
            return Outcome(False, "CONNECTION")
        except orjson.JSONDecodeError:
            return Outcome(False, "BAD_RESPONSE")
        return Outcome(True, "200", _model_version(answer))

    async def close(self) -> None:
        """Close the connections."""
        await self._pool.close()


def _model_version(answer: object) -> str | None:
    version = answer.get("model_version") if isinstance(answer, dict) else None
    return str(version) if version else None


def open_client(protocol: str, target: Target, endpoints: Sequence[str]) -> Client:
    """A client of ``target`` speaking ``protocol``."""
    if protocol == "grpc":
        return GrpcClient(target)
    paths = {name: f"/v2/models/{urllib.parse.quote(name, safe='')}/infer" for name in endpoints}
    return HttpClient(target, paths)


async def input_specs(protocol: str, target: Target, endpoint: str) -> list[InputSpec]:
    """The endpoint's inputs from the server's model metadata; UsageError when the server
    cannot be reached or does not serve the endpoint."""
    try:
        if protocol == "grpc":
            metadata = await _grpc_model_metadata(target, endpoint)
            return [
                InputSpec(tensor.name, tensor.datatype, tuple(tensor.shape))
                for tensor in metadata.inputs
            ]
        pool = HttpPool(target.host, target.port, 1)
        try:
            path = f"/v2/models/{urllib.parse.quote(endpoint, safe='')}"
            response = await pool.request("GET", path, [], b"", 10)
        finally:
            await pool.close()
        if response.status != 200:
            raise UsageError(f"{target}: endpoint {endpoint!r}: HTTP {response.status}")
        answer = orjson.loads(response.body)
        return [
            InputSpec(tensor["name"], tensor["datatype"], tuple(tensor["shape"]))
            for tensor in answer["inputs"]
        ]
    except (TimeoutError, HttpError) as error:
        raise UsageError(f"{target}: cannot be reached ({error})") from None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        answer_error = f"{target}: endpoint {endpoint!r}: not a V2 model metadata answer"
        raise UsageError(answer_error) from None


async def _grpc_model_metadata(target: Target, endpoint: str) -> pb.ModelMetadataResponse:
    channel = GrpcChannel(target.host, target.port)
    try:
        request = pb.ModelMetadataRequest(name=endpoint).SerializeToString()
        reply = await channel.unary(MODEL_METADATA, request, timeout_s=10)
    finally:
        await channel.close()
    if reply.code in ("CONNECTION", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
        raise UsageError(f"{target}: cannot be reached ({reply.details})")
    if reply.code != "OK" or reply.message is None:
        raise UsageError(f"{target}: endpoint {endpoint!r}: {reply.code}: {reply.details}")
    try:
        return pb.ModelMetadataResponse.FromString(reply.message)
    except DecodeError:
        raise UsageError(f"{target}: endpoint {endpoint!r}: not a model metadata answer") from None
