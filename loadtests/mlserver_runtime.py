"""An MLServer runtime serving an ONNX model with ONNX Runtime inside the MLServer process: the
in-process Python model that the throughput benchmark holds Turnout against (issue 3).

MLServer imports this module from its own venv, where Turnout is not installed, so it imports
only mlserver (and grpc, which MLServer is built on), onnxruntime and the standard library.

Triton's perf_analyzer will not start without the model's Triton configuration (HTTP
``GET /v2/models/{m}/config``, gRPC ``ModelConfig``), which MLServer does not serve. The runtime
adds the HTTP route as an MLServer custom handler. MLServer has no way to add a gRPC method, and
builds its gRPC server before it imports any runtime, so run as a script this module adds
``ModelConfig`` to MLServer's gRPC service and then runs MLServer's own command line:

    .venv-mls/bin/python mlserver_runtime.py start DIR

with ``DIR/<model>/model-settings.json`` naming ``mlserver_runtime.OnnxRuntimeModel`` as the
implementation and the ONNX file as ``parameters.uri``.
"""

import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
import onnxruntime as ort
from mlserver import MLModel
from mlserver.cli import main as mlserver_main
from mlserver.codecs import NumpyCodec
from mlserver.errors import ModelNotFound
from mlserver.grpc import dataplane_pb2
from mlserver.grpc.server import GRPCServer
from mlserver.handlers import DataPlane, custom_handler
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

# ONNX Runtime's element types by their V2 names.
_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
# What Turnout's repository gives a model whose tensors all have a variable first dimension.
_MAX_BATCH_SIZE = 64


class OnnxRuntimeModel(MLModel):  # type: ignore[misc]  # mlserver is untyped here (.venv-mls)
    """One ONNX model on the CPU, run on MLServer's event loop as each request arrives."""

    async def load(self) -> bool:
        """Open the session and describe its tensors for the metadata endpoints."""
        self._session = _session(await get_model_uri(self.settings))
        self._output_names = [output.name for output in self._session.get_outputs()]
        self.inputs = [_metadata(arg) for arg in self._session.get_inputs()]
        self.outputs = [_metadata(arg) for arg in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Decode every input with NumpyCodec, run the session, encode every output alike."""
        feed = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self._session.run(self._output_names, feed)
        outputs = []
        for name, value in zip(self._output_names, results, strict=True):
            output = NumpyCodec.encode_output(name, value)
            # perf_analyzer takes a parameters object on an HTTP output for the binary
            # extension's and fails on finding no binary_data_size; the codec's content_type
            # is only a hint for MLServer's own decoders.
            output.parameters = None
            outputs.append(output)
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs
        )

    @custom_handler(rest_path="/v2/models/{model_name}/config", rest_method="GET")  # type: ignore[untyped-decorator]
    async def config_route(self, model_name: str) -> dict[str, Any]:
        """The model's Triton configuration, as Triton's HTTP endpoint of that path gives it."""
        if model_name != self.name:
            raise ModelNotFound(model_name)
        return _triton_config(self.name, [*self.inputs, *self.outputs])


def _triton_config(name: str, tensors: list[MetadataTensor]) -> dict[str, Any]:
    """The part of a Triton model configuration perf_analyzer reads: the tensors themselves it
    takes from the model's metadata."""
    batched = all(tensor.shape and tensor.shape[0] == -1 for tensor in tensors)
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": _MAX_BATCH_SIZE if batched else 0,
    }


def _model_config_response(config: dict[str, Any]) -> bytes:
    """``config`` (as ``_triton_config`` gives it) as a serialised
    ``inference.ModelConfigResponse``, encoded by hand since no module of MLServer's venv
    holds that message."""
    message = (
        _field(1, config["name"])
        + _field(2, config["platform"])
        + _field(4, config["max_batch_size"])
        + _field(17, config["backend"])
    )
    return _field(1, message)


def _field(number: int, value: str | bytes | int) -> bytes:
    """One protobuf field: a varint for an int, length-delimited for text and bytes."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _session(path: str) -> ort.InferenceSession:
    """The options Turnout gives a one-instance CPU version by default (``create_session`` with
    ``SessionSettings()``): every core to the one instance, no spinning, all optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _metadata(arg: ort.NodeArg) -> MetadataTensor:
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape]
    return MetadataTensor(name=arg.name, datatype=_DATATYPES[arg.type], shape=shape)


def _add_model_config_rpc() -> None:
    """Have every gRPC server MLServer builds from now on answer ``ModelConfig`` too."""
    create_server: Callable[[GRPCServer], grpc.aio.Server] = GRPCServer._create_server

    def create_server_with_model_config(server: GRPCServer) -> grpc.aio.Server:
        built = create_server(server)
        data_plane: DataPlane = server._data_plane

        # ModelConfigRequest has ModelMetadataRequest's fields (name = 1, version = 2), and
        # MLServer's protos hold only the latter.
        async def model_config(
            request: dataplane_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
        ) -> bytes:
            try:
                metadata = await data_plane.model_metadata(request.name, request.version)
            except ModelNotFound as error:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            config = _triton_config(metadata.name, [*metadata.inputs, *metadata.outputs])
            return _model_config_response(config)

        handler = grpc.unary_unary_rpc_method_handler(
            model_config, request_deserializer=dataplane_pb2.ModelMetadataRequest.FromString
        )
        built.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "inference.GRPCInferenceService", {"ModelConfig": handler}
                ),
            )
        )
        return built

    GRPCServer._create_server = create_server_with_model_config


if __name__ == "__main__":
    _add_model_config_rpc()
    sys.exit(mlserver_main())
