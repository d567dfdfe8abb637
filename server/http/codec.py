"""V2 inference requests and responses over HTTP: JSON tensors and the binary tensor data
extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then raw tensors)."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from turnout.errors import InvalidInput, quoted
from turnout.router.types import InferenceRequest, InferenceResponse, ParameterValue
from turnout.server.http.json_tensors import decode_json_data, encode_json_data
from turnout.server.parameters import request_deadline, routing_key
from turnout.server.tensors import (
    DEFAULT_LIMITS,
    RequestLimits,
    check_tensor_count,
    decode_raw,
    encode_raw,
    output_datatype,
    parse_datatype,
    parse_shape,
)

MAX_ID_LENGTH = 1024


@dataclass(slots=True)
class HttpInferRequest:
    """A decoded request and how its outputs are to be returned."""

    request: InferenceRequest
    binary_choices: dict[str, bool]
    binary_by_default: bool

    def wants_binary(self, output: str) -> bool:
        """Whether ``output`` goes back as raw bytes rather than JSON data."""
        return self.binary_choices.get(output, self.binary_by_default)


@dataclass(slots=True)
class EncodedResponse:
    """A response body, and the JSON header's length when binary tensors follow it."""

    body: bytes
    header_length: int | None


def decode_request(
    body: bytes,
    header_length: int | None,
    endpoint: str,
    version: str | None,
    routing_key_header: str | None = None,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> HttpInferRequest:
    """Decode an inference request body; raises InvalidInput naming what is wrong."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[:0]
    else:
        if header_length > len(view):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length} but the body has only "
                f"{len(view)} bytes"
            )
        header, binary = view[:header_length], view[header_length:]
    if not header:
        raise InvalidInput("the request body is empty; expected a JSON object")
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request body must be a JSON object")
    request_id = document.get("id", "")
    if not isinstance(request_id, str) or len(request_id) > MAX_ID_LENGTH:
        raise InvalidInput(f"id must be a string of at most {MAX_ID_LENGTH} characters")
    parameters = _parameters(document.get("parameters"), "parameters")
    inputs = _inputs(document.get("inputs"), binary, limits)
    requested, binary_choices = _requested_outputs(document.get("outputs"), limits)
    binary_by_default = parameters.pop("binary_data_output", False) is True
    request = InferenceRequest(
        endpoint=endpoint,
        inputs=inputs,
        request_id=request_id,
        version=version,
        requested_outputs=requested,
        parameters=parameters,
        routing_key=routing_key(parameters, routing_key_header),
        deadline=request_deadline(parameters, None),
    )
    return HttpInferRequest(request, binary_choices, binary_by_default)


def _inputs(items: Any, binary: memoryview, limits: RequestLimits) -> dict[str, np.ndarray]:
    if not isinstance(items, list):
        raise InvalidInput("inputs must be a list of tensors")
    check_tensor_count(len(items), "inputs", limits)
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(items):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be a JSON object")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"{where}.name must be a string")
        if name in inputs:
            raise InvalidInput(f"duplicate input {quoted(name)}")
        where = f"input {quoted(name)}"
        datatype = parse_datatype(item.get("datatype"), where)
        shape = parse_shape(item.get("shape"), where, limits)
        parameters = _parameters(item.get("parameters"), f"{where} parameters")
        size = parameters.get("binary_data_size")
        has_data = "data" in item
        if size is not None:
            if has_data:
                raise InvalidInput(f"{where}: give either data or binary_data_size, not both")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} binary bytes left)"
                )
            inputs[name] = decode_raw(
                binary[offset : offset + size], datatype, shape, where, limits
            )
            offset += size
        elif has_data:
            inputs[name] = decode_json_data(item["data"], datatype, shape, where, limits)
        else:
            raise InvalidInput(f"{where} has no data")
    if offset != len(binary):
        raise InvalidInput(
            f"the binary inputs declare {offset} bytes but {len(binary)} follow the JSON header"
        )
    return inputs


def _requested_outputs(
    items: Any, limits: RequestLimits
) -> tuple[tuple[str, ...] | None, dict[str, bool]]:
    if items is None:
        return None, {}
    if not isinstance(items, list):
        raise InvalidInput("outputs must be a list")
    check_tensor_count(len(items), "outputs", limits)
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise InvalidInput(f"outputs[{index}].name must be a string")
        if name in names:
            raise InvalidInput(f"duplicate output {quoted(name)}")
        parameters = _parameters(item.get("parameters"), f"output {quoted(name)} parameters")
        if "classification" in parameters:
            raise InvalidInput("the classification extension is not supported")
        choice = parameters.get("binary_data")
        if choice is not None:
            if not isinstance(choice, bool):
                raise InvalidInput(f"output {quoted(name)}: binary_data must be true or false")
            binary[name] = choice
        names.append(name)
    return tuple(names), binary


def _parameters(value: Any, where: str) -> dict[str, ParameterValue]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str):
            raise InvalidInput(f"{where}: {quoted(key)} must be a boolean, number or string")
    return value


def encode_response(
    response: InferenceResponse, request_id: str, decoded: HttpInferRequest
) -> EncodedResponse:
    """Encode outputs as JSON, or as JSON plus raw tensors for those asked for in binary."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in response.outputs.items():
        datatype = output_datatype(name, array)
        output: dict[str, Any] = {"name": name, "datatype": datatype.name, "shape": array.shape}
        if decoded.wants_binary(name):
            blob = encode_raw(array, datatype)
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = encode_json_data(array, datatype)
        outputs.append(output)
    header = orjson.dumps(
        {
            "model_name": response.endpoint,
            "model_version": response.version,
            "id": request_id,
            "outputs": outputs,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not blobs:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join((header, *blobs)), len(header))
