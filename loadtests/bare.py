"""The floor of each transport: servers on Turnout's stack (grpc.aio, or a plain ASGI app on
uvicorn, both on uvloop) that only decode a V2 request, run ONNX Runtime on the event loop and
encode the answer. The overhead benchmark compares Turnout with them.

Besides inference they answer, with fixed documents for the demo's MLP, the metadata,
configuration and statistics requests perf_analyzer makes before it starts.

    python -m turnout.loadtests.bare {grpc,http} MODEL PORT_FILE
"""

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
import uvloop
from google.protobuf import json_format

from turnout.models.providers import CPU
from turnout.models.session import SessionSettings, create_session
from turnout.protos import inference_pb2 as pb
from turnout.server.demo import CLASSES, DEMO_MODEL, FEATURES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

METADATA = {
    "name": DEMO_MODEL,
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, FEATURES]}],
    "outputs": [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, CLASSES]},
        {"name": "LABEL", "datatype": "INT64", "shape": [-1]},
    ],
}
CONFIG = {
    "name": DEMO_MODEL,
    "platform": "onnxruntime_onnx",
    "backend": "onnxruntime",
    "max_batch_size": 64,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [FEATURES]}],
    "output": [
        {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [CLASSES]},
        {"name": "LABEL", "data_type": "TYPE_INT64", "dims": []},
    ],
}
STATISTICS = {"model_stats": [{"name": DEMO_MODEL, "version": "1"}]}
SERVER = {"name": "bare", "version": "1", "extensions": []}
_DATATYPES = {"float32": "FP32", "int64": "INT64"}


def _session(model: Path) -> ort.InferenceSession:
    """The same session options Turnout gives a one-instance CPU version by default."""
    return create_session(model, SessionSettings(), [(CPU, {})], instance_count=1)


async def serve_grpc(model: Path, port_file: Path) -> None:
    """A grpc.aio server answering ModelInfer with raw tensors, and ModelStreamInfer with one
    answer per request in order, each run as it is read."""
    session = _session(model)
    output_names = [output.name for output in session.get_outputs()]

    async def model_infer(
        request: pb.ModelInferRequest, context: grpc.aio.ServicerContext | None
    ) -> pb.ModelInferResponse:
        tensor = request.inputs[0]
        array = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tensor.shape)
        outputs = session.run(output_names, {tensor.name: array})
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for name, value in zip(output_names, outputs, strict=True):
            response.outputs.add(
                name=name, datatype=_DATATYPES[value.dtype.name], shape=value.shape
            )
            response.raw_output_contents.append(value.tobytes())
        return response

    async def model_stream_infer(
        requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=await model_infer(request, None))

    def fixed(answer: Any) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return answer

        return handler

    def unary(
        behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
        request: Any,
        response: Any,
    ) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )

    methods = {
        "ModelInfer": unary(model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            model_stream_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        ),
        "ServerMetadata": unary(
            fixed(json_format.ParseDict(SERVER, pb.ServerMetadataResponse())),
            pb.ServerMetadataRequest,
            pb.ServerMetadataResponse,
        ),
        "ModelMetadata": unary(
            fixed(json_format.ParseDict(METADATA, pb.ModelMetadataResponse())),
            pb.ModelMetadataRequest,
            pb.ModelMetadataResponse,
        ),
        "ModelConfig": unary(
            fixed(pb.ModelConfigResponse(config=json_format.ParseDict(CONFIG, pb.ModelConfig()))),
            pb.ModelConfigRequest,
            pb.ModelConfigResponse,
        ),
        "ModelStatistics": unary(
            fixed(json_format.ParseDict(STATISTICS, pb.ModelStatisticsResponse())),
            pb.ModelStatisticsRequest,
            pb.ModelStatisticsResponse,
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", methods),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.to_thread(port_file.write_text, str(port))
    await server.wait_for_termination()


def asgi_app(model: Path) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A plain ASGI app: POST is a V2 JSON inference; GET answers metadata, config or stats."""
    session = _session(model)
    output_names = [output.name for output in session.get_outputs()]
    documents = {
        "config": orjson.dumps(CONFIG),
        "stats": orjson.dumps(STATISTICS),
        "v2": orjson.dumps(SERVER),
        DEMO_MODEL: orjson.dumps(METADATA),
    }

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            await _answer(send, documents.get(scope["path"].rsplit("/", 1)[-1], b"{}"))
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = orjson.loads(body)
        tensor = request["inputs"][0]
        array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        outputs = session.run(output_names, {tensor["name"]: array})
        answer = {
            "model_name": DEMO_MODEL,
            "model_version": "1",
            "id": request.get("id", ""),
            "outputs": [
                {
                    "name": name,
                    "datatype": _DATATYPES[value.dtype.name],
                    "shape": value.shape,
                    "data": value.reshape(-1),
                }
                for name, value in zip(output_names, outputs, strict=True)
            ],
        }
        await _answer(send, orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY))

    return app


async def _answer(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_http(model: Path, port_file: Path) -> None:
    """The plain ASGI app on uvicorn with httptools, as Turnout runs its HTTP front end."""
    listener = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        asgi_app(model), http="httptools", lifespan="off", log_config=None, access_log=False
    )
    await asyncio.to_thread(port_file.write_text, str(listener.getsockname()[1]))
    await uvicorn.Server(config).serve(sockets=[listener])


def main() -> None:
    """Run the bare server named on the command line."""
    kind, model, port_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    serve = serve_grpc if kind == "grpc" else serve_http
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(model, port_file))


if __name__ == "__main__":
    main()
