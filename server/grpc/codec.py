"""V2 inference requests and responses as protobuf messages: typed ``contents`` or
``raw_input_contents`` in, ``raw_output_contents`` out (as Triton answers)."""

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format

from turnout.errors import InvalidInput, quoted
from turnout.models.datatypes import Datatype
from turnout.protos import inference_pb2 as pb
from turnout.router.types import InferenceRequest, InferenceResponse, ParameterValue
from turnout.server.parameters import request_deadline, routing_key
from turnout.server.tensors import (
    DEFAULT_LIMITS,
    RequestLimits,
    check_string_length,
    check_tensor_count,
    decode_raw,
    element_count,
    encode_raw,
    narrow_integers,
    output_datatype,
    parse_datatype,
    parse_shape,
)

# The typed contents field that carries each datatype; FP16 has none and travels only raw.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_request(
    message: pb.ModelInferRequest,
    remaining_s: float | None,
    routing_key_metadata: str | None,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> InferenceRequest:
    """Decode a ModelInferRequest; ``remaining_s`` is the client's gRPC deadline, if any."""
    check_tensor_count(len(message.inputs), "inputs", limits)
    check_tensor_count(len(message.outputs), "outputs", limits)
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "give one per input, or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"duplicate input {quoted(name)}")
        where = f"input {quoted(name)}"
        datatype = parse_datatype(tensor.datatype, where)
        shape = parse_shape(list(tensor.shape), where, limits)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where}: give contents or raw_input_contents, not both")
            inputs[name] = decode_raw(raw[index], datatype, shape, where, limits)
        else:
            inputs[name] = _typed_tensor(tensor.contents, datatype, shape, where, limits)
    requested = _requested_outputs(message.outputs)
    parameters = parameters_of(message.parameters, "parameters")
    return InferenceRequest(
        endpoint=message.model_name,
        inputs=inputs,
        request_id=message.id,
        version=message.model_version or None,
        requested_outputs=requested,
        parameters=parameters,
        routing_key=routing_key(parameters, routing_key_metadata),
        deadline=request_deadline(parameters, remaining_s),
    )


def _typed_tensor(
    contents: pb.InferTensorContents,
    datatype: Datatype,
    shape: tuple[int, ...],
    where: str,
    limits: RequestLimits,
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype.name)
    if field is None:
        raise InvalidInput(f"{where}: {datatype.name} data must be sent in raw_input_contents")
    others = [
        descriptor.name for descriptor, _ in contents.ListFields() if descriptor.name != field
    ]
    if others:
        raise InvalidInput(
            f"{where}: {datatype.name} data goes in contents.{field}, not {others[0]}"
        )
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {count} elements, contents.{field} has "
            f"{len(values)}"
        )
    if datatype.is_bytes:
        for index, element in enumerate(values):
            check_string_length(len(element), index, where, limits)
        elements = np.empty(count, dtype=object)
        elements[:] = list(values)
        return elements.reshape(shape)
    target = datatype.dtype
    if target.kind not in "iu":
        return np.array(values, dtype=target).reshape(shape)
    # int_contents and uint_contents are 32 bits wide; INT8/16 and UINT8/16 must fit in less.
    wide = np.array(values, dtype=np.uint64 if target.kind == "u" else np.int64)
    return narrow_integers(wide, datatype, where).reshape(shape)


def _requested_outputs(
    outputs: Iterable[pb.ModelInferRequest.InferRequestedOutputTensor],
) -> tuple[str, ...] | None:
    names: list[str] = []
    for output in outputs:
        if output.name in names:
            raise InvalidInput(f"duplicate output {quoted(output.name)}")
        if "classification" in output.parameters:
            raise InvalidInput("the classification extension is not supported")
        names.append(output.name)
    return tuple(names) if names else None


def parameters_of(
    parameters: Mapping[str, pb.InferParameter], where: str
) -> dict[str, ParameterValue]:
    """Protobuf parameters as plain values."""
    values: dict[str, ParameterValue] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidInput(f"{where}: {quoted(key)} has no value")
        values[key] = getattr(parameter, choice)
    return values


def encode_response(response: InferenceResponse, request_id: str) -> pb.ModelInferResponse:
    """A ModelInferResponse with every output in raw_output_contents."""
    message = pb.ModelInferResponse(
        model_name=response.endpoint, model_version=response.version, id=request_id
    )
    for name, array in response.outputs.items():
        datatype = output_datatype(name, array)
        message.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        message.raw_output_contents.append(encode_raw(array, datatype))
    return message


def metadata_message(view: dict[str, Any]) -> pb.ModelMetadataResponse:
    """ModelMetadataResponse from the shared metadata view."""
    return json_format.ParseDict(view, pb.ModelMetadataResponse())


def config_message(view: dict[str, Any]) -> pb.ModelConfigResponse:
    """ModelConfigResponse from the shared configuration view."""
    return pb.ModelConfigResponse(config=json_format.ParseDict(view, pb.ModelConfig()))


def statistics_message(views: list[dict[str, Any]]) -> pb.ModelStatisticsResponse:
    """ModelStatisticsResponse from the shared statistics views."""
    return json_format.ParseDict({"model_stats": views}, pb.ModelStatisticsResponse())
