"""V2 inference requests and responses over HTTP (server/http/codec.py): JSON tensors, the binary
tensor data extension, requested outputs, parameters, and every way a body can be wrong."""

import struct
import time
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from turnout.errors import InvalidInput
from turnout.models.datatypes import DATATYPES
from turnout.models.types import RunStats
from turnout.router.types import InferenceResponse
from turnout.server.http.codec import (
    MAX_ID_LENGTH,
    HttpInferRequest,
    decode_request,
    encode_response,
)

ALL_NAMES = ", ".join(DATATYPES)
# Bounded and derandomized: the same examples every run, a few seconds in all.
PROPERTY = settings(max_examples=200, deadline=None, database=None, derandomize=True)


def _tensor(
    name: str = "x", datatype: str = "FP32", shape: Any = None, **fields: Any
) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [2] if shape is None else shape, **fields}


def _document(*inputs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **fields}


def _decode(document: Any, endpoint: str = "mlp", version: str | None = None) -> HttpInferRequest:
    return decode_request(orjson.dumps(document), None, endpoint, version)


def _binary_body(document: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    """A binary-extension body: the JSON header, then the raw tensors; and the header length."""
    header = orjson.dumps(document)
    return header + b"".join(blobs), len(header)


def _refusal(body: bytes, header_length: int | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        decode_request(body, header_length, "mlp", None)
    return caught.value.message


def _length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def _nested(value: Any, depth: int) -> Any:
    """``value`` inside ``depth`` one-element lists."""
    for _ in range(depth):
        value = [value]
    return value


def _response(outputs: dict[str, np.ndarray], version: str = "2") -> InferenceResponse:
    return InferenceResponse("mlp", version, outputs, RunStats(1, 0.0, 0.0, 1))


def _wanting(binary: dict[str, bool] | None = None, default: bool = False) -> HttpInferRequest:
    decoded = _decode(_document(_tensor(data=[1, 2])))
    return HttpInferRequest(decoded.request, binary or {}, default)


# --- decode_request: JSON tensors ------------------------------------------------------------


def test_json_request_decodes_into_a_transport_free_request() -> None:
    decoded = _decode(
        {
            "id": "42",
            "inputs": [_tensor(shape=[2, 3], data=[0.5, 1, 2, 3, 4, 5])],
        },
        endpoint="mlp",
        version="1",
    )

    request = decoded.request
    assert request.endpoint == "mlp"
    assert request.version == "1"
    assert request.request_id == "42"
    assert list(request.inputs) == ["x"]
    array = request.inputs["x"]
    assert array.dtype == np.float32
    assert array.shape == (2, 3)
    assert array.tolist() == [[0.5, 1, 2], [3, 4, 5]]
    assert request.requested_outputs is None
    assert request.parameters == {}
    assert request.routing_key is None
    assert request.deadline is None
    assert decoded.binary_choices == {}
    assert decoded.binary_by_default is False


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        pytest.param([2, 3], [1, 2, 3, 4, 5, 6], id="flat"),
        pytest.param([2, 3], [[1, 2, 3], [4, 5, 6]], id="nested"),
        pytest.param([1, 2, 3], [[[1, 2, 3], [4, 5, 6]]], id="nested-rank-3"),
    ],
)
def test_json_data_is_row_major_flat_or_nested(shape: list[int], data: Any) -> None:
    array = _decode(_document(_tensor(datatype="INT32", shape=shape, data=data))).request.inputs[
        "x"
    ]
    assert array.shape == tuple(shape)
    assert array.reshape(-1).tolist() == [1, 2, 3, 4, 5, 6]


# (datatype, JSON data reaching the type's edges).
JSON_CASES = [
    pytest.param("BOOL", [True, False], id="BOOL"),
    pytest.param("UINT8", [0, 255], id="UINT8"),
    pytest.param("UINT16", [0, 65535], id="UINT16"),
    pytest.param("UINT32", [0, 2**32 - 1], id="UINT32"),
    pytest.param("UINT64", [0, 2**64 - 1], id="UINT64"),
    pytest.param("INT8", [-128, 127], id="INT8"),
    pytest.param("INT16", [-32768, 32767], id="INT16"),
    pytest.param("INT32", [-(2**31), 2**31 - 1], id="INT32"),
    pytest.param("INT64", [-(2**63), 2**63 - 1], id="INT64"),
    pytest.param("FP16", [-65504.0, 6e-08], id="FP16"),
    pytest.param("FP32", [-3.4028234663852886e38, 1e-45], id="FP32"),
    pytest.param("FP64", [1.7976931348623157e308, 5e-324], id="FP64"),
    pytest.param("FP32", [1, -(2**40)], id="FP32-from-integers"),
    pytest.param("FP64", [2**64 - 1, 0.5], id="FP64-from-mixed-numbers"),
]


@pytest.mark.parametrize(("datatype", "data"), JSON_CASES)
def test_json_data_of_every_numeric_datatype(datatype: str, data: list[Any]) -> None:
    dtype = DATATYPES[datatype].dtype
    array = _decode(_document(_tensor(datatype=datatype, data=data))).request.inputs["x"]
    assert array.dtype == dtype
    np.testing.assert_array_equal(array, np.array(data, dtype=dtype))


def test_json_bytes_data_are_utf8_encoded_strings() -> None:
    array = _decode(
        _document(_tensor(datatype="BYTES", shape=[2, 2], data=[["", "a"], ["ü", "日本"]]))
    ).request.inputs["x"]
    assert array.dtype == np.object_
    assert array.shape == (2, 2)
    assert array.tolist() == [[b"", b"a"], ["ü".encode(), "日本".encode()]]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "expected"),
    [
        pytest.param("FP32", [], 2.5, 2.5, id="scalar-shape"),
        pytest.param("INT32", [1], 7, [7], id="bare-value-for-one-element"),
        pytest.param("BYTES", [1], "hi", [b"hi"], id="bare-string"),
        pytest.param("BOOL", [1, 1], True, [[True]], id="bare-bool"),
    ],
)
def test_json_data_may_be_a_bare_value_for_one_element(
    datatype: str, shape: list[int], data: Any, expected: Any
) -> None:
    array = _decode(_document(_tensor(datatype=datatype, shape=shape, data=data))).request.inputs[
        "x"
    ]
    assert array.shape == tuple(shape)
    assert array.tolist() == expected


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_empty_tensor(datatype: str) -> None:
    array = _decode(_document(_tensor(datatype=datatype, shape=[0, 3], data=[]))).request.inputs[
        "x"
    ]
    assert array.shape == (0, 3)
    assert array.dtype == DATATYPES[datatype].dtype


def test_several_json_inputs_keep_their_order() -> None:
    inputs = _decode(
        _document(
            _tensor("b", "INT64", [1], data=[1]),
            _tensor("a", "BYTES", [1], data=["s"]),
            _tensor("c", "BOOL", [1], data=[True]),
        )
    ).request.inputs
    assert list(inputs) == ["b", "a", "c"]


# --- decode_request: the binary tensor data extension ----------------------------------------


# (datatype, struct format, values): raw tensors of each width.
BINARY_CASES = [
    pytest.param("BOOL", "?", [True, False], id="BOOL"),
    pytest.param("UINT8", "B", [0, 255], id="UINT8"),
    pytest.param("UINT16", "H", [1, 65535], id="UINT16"),
    pytest.param("UINT32", "I", [1, 2**32 - 1], id="UINT32"),
    pytest.param("UINT64", "Q", [1, 2**64 - 1], id="UINT64"),
    pytest.param("INT8", "b", [-128, 127], id="INT8"),
    pytest.param("INT16", "h", [-32768, 32767], id="INT16"),
    pytest.param("INT32", "i", [-(2**31), 2**31 - 1], id="INT32"),
    pytest.param("INT64", "q", [-(2**63), 2**63 - 1], id="INT64"),
    pytest.param("FP16", "e", [0.5, -65504.0], id="FP16"),
    pytest.param("FP32", "f", [0.1, -1e-45], id="FP32"),
    pytest.param("FP64", "d", [0.1, 5e-324], id="FP64"),
]


@pytest.mark.parametrize(("datatype", "fmt", "values"), BINARY_CASES)
def test_binary_input_of_every_numeric_datatype(datatype: str, fmt: str, values: list[Any]) -> None:
    blob = struct.pack(f"<2{fmt}", *values)
    body, header_length = _binary_body(
        _document(_tensor(datatype=datatype, parameters={"binary_data_size": len(blob)})), blob
    )

    array = decode_request(body, header_length, "mlp", None).request.inputs["x"]

    dtype = DATATYPES[datatype].dtype
    assert array.dtype == dtype
    np.testing.assert_array_equal(array, np.array(values, dtype=dtype))


def test_binary_bytes_input_is_length_prefixed() -> None:
    blob = _length_prefixed(b"ab", b"", b"\xff")
    body, header_length = _binary_body(
        _document(_tensor(datatype="BYTES", shape=[3], parameters={"binary_data_size": len(blob)})),
        blob,
    )
    array = decode_request(body, header_length, "mlp", None).request.inputs["x"]
    assert array.tolist() == [b"ab", b"", b"\xff"]


def test_binary_bool_input_normalises_non_zero_bytes() -> None:
    body, header_length = _binary_body(
        _document(_tensor(datatype="BOOL", shape=[3], parameters={"binary_data_size": 3})),
        bytes([0, 7, 255]),
    )
    array = decode_request(body, header_length, "mlp", None).request.inputs["x"]
    assert array.tolist() == [False, True, True]
    assert array.view(np.uint8).tolist() == [0, 1, 1]


def test_mixed_json_and_binary_inputs_take_the_binary_parts_in_order() -> None:
    first = struct.pack("<2i", 1, 2)
    third = _length_prefixed(b"hello", b"world")
    body, header_length = _binary_body(
        _document(
            _tensor("a", "INT32", [2], parameters={"binary_data_size": len(first)}),
            _tensor("b", "FP32", [2], data=[0.5, 1.5]),
            _tensor("c", "BYTES", [2], parameters={"binary_data_size": len(third)}),
            _tensor("d", "UINT8", [0], parameters={"binary_data_size": 0}),
        ),
        first,
        third,
    )

    inputs = decode_request(body, header_length, "mlp", None).request.inputs

    assert list(inputs) == ["a", "b", "c", "d"]
    assert inputs["a"].tolist() == [1, 2]
    assert inputs["b"].tolist() == [0.5, 1.5]
    assert inputs["c"].tolist() == [b"hello", b"world"]
    assert inputs["d"].shape == (0,)


def test_header_length_covering_the_whole_body_means_no_binary_part() -> None:
    body = orjson.dumps(_document(_tensor(data=[1, 2])))
    decoded = decode_request(body, len(body), "mlp", None)
    assert decoded.request.inputs["x"].tolist() == [1.0, 2.0]


# --- decode_request: requested outputs and how they come back --------------------------------


def test_requested_outputs_and_their_binary_choices() -> None:
    decoded = _decode(
        _document(
            _tensor(data=[1, 2]),
            outputs=[
                {"name": "a"},
                {"name": "b", "parameters": {"binary_data": True}},
                {"name": "c", "parameters": {"binary_data": False}},
            ],
        )
    )
    assert decoded.request.requested_outputs == ("a", "b", "c")
    assert decoded.binary_choices == {"b": True, "c": False}
    assert decoded.binary_by_default is False
    assert [decoded.wants_binary(name) for name in ("a", "b", "c", "other")] == [
        False,
        True,
        False,
        False,
    ]


def test_binary_data_output_sends_every_output_binary_unless_one_says_otherwise() -> None:
    decoded = _decode(
        _document(
            _tensor(data=[1, 2]),
            parameters={"binary_data_output": True, "priority": 1},
            outputs=[{"name": "a"}, {"name": "c", "parameters": {"binary_data": False}}],
        )
    )
    assert decoded.binary_by_default is True
    assert [decoded.wants_binary(name) for name in ("a", "c", "unlisted")] == [True, False, True]
    # A transport setting, not something for the core.
    assert decoded.request.parameters == {"priority": 1}


def test_binary_data_output_false_keeps_json() -> None:
    decoded = _decode(_document(_tensor(data=[1, 2]), parameters={"binary_data_output": False}))
    assert decoded.binary_by_default is False
    assert decoded.wants_binary("a") is False


# --- decode_request: parameters, deadline, routing key, id -----------------------------------


def test_parameters_reach_the_core_unchanged() -> None:
    parameters = {"priority": 2, "flag": True, "ratio": 0.25, "tag": "t"}
    decoded = _decode(_document(_tensor(data=[1, 2]), parameters=parameters))
    assert decoded.request.parameters == parameters


def test_timeout_parameter_in_microseconds_sets_the_deadline() -> None:
    before = time.monotonic()
    decoded = _decode(_document(_tensor(data=[1, 2]), parameters={"timeout": 50_000}))
    after = time.monotonic()
    deadline = decoded.request.deadline
    assert deadline is not None
    assert before + 0.05 <= deadline <= after + 0.05


@pytest.mark.parametrize(
    "parameters",
    [pytest.param({}, id="absent"), pytest.param({"timeout": 0}, id="zero")],
)
def test_no_or_zero_timeout_means_no_deadline(parameters: dict[str, Any]) -> None:
    assert _decode(_document(_tensor(data=[1, 2]), parameters=parameters)).request.deadline is None


def test_routing_key_parameter() -> None:
    decoded = _decode(_document(_tensor(data=[1, 2]), parameters={"routing_key": "user-7"}))
    assert decoded.request.routing_key == "user-7"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, "", id="absent"),
        pytest.param({"id": ""}, "", id="empty"),
        pytest.param({"id": "req-1"}, "req-1", id="given"),
        pytest.param({"id": "ü" * MAX_ID_LENGTH}, "ü" * MAX_ID_LENGTH, id="longest"),
    ],
)
def test_id_is_echoed(fields: dict[str, Any], expected: str) -> None:
    assert _decode(_document(_tensor(data=[1, 2]), **fields)).request.request_id == expected


# --- decode_request: every way a body is refused ---------------------------------------------


def _json_case(document: Any, *fragments: str, id: str) -> Any:
    return pytest.param(orjson.dumps(document), None, fragments, id=id)


def _binary_case(document: dict[str, Any], blob: bytes, *fragments: str, id: str) -> Any:
    body, header_length = _binary_body(document, blob)
    return pytest.param(body, header_length, fragments, id=id)


def _input_case(tensor: dict[str, Any], *fragments: str, id: str) -> Any:
    return _json_case(_document(tensor), *fragments, id=id)


BODY_ERRORS = [
    # The body as a whole.
    pytest.param(b"", None, ["the request body is empty; expected a JSON object"], id="empty"),
    pytest.param(
        b'{"inputs": [',
        None,
        ["malformed JSON: unexpected end of data at position 12"],
        id="truncated-json",
    ),
    pytest.param(
        b'{"inputs": [],}', None, ["malformed JSON:", "at position 13"], id="trailing-comma"
    ),
    pytest.param(b"   ", None, ["malformed JSON:"], id="whitespace"),
    pytest.param(b"\xff\xfe{}", None, ["malformed JSON:"], id="not-utf8"),
    pytest.param(b"{} {}", None, ["malformed JSON:"], id="two-documents"),
    pytest.param(b"[]", None, ["the request body must be a JSON object"], id="array-body"),
    pytest.param(b'"x"', None, ["the request body must be a JSON object"], id="string-body"),
    pytest.param(b"3", None, ["the request body must be a JSON object"], id="number-body"),
    pytest.param(b"null", None, ["the request body must be a JSON object"], id="null-body"),
    # id
    _json_case(
        {"id": 42, "inputs": []}, "id must be a string of at most 1024 characters", id="id-number"
    ),
    _json_case({"id": None, "inputs": []}, "id must be a string", id="id-null"),
    _json_case(
        {"id": "a" * (MAX_ID_LENGTH + 1), "inputs": []},
        "id must be a string of at most 1024 characters",
        id="id-too-long",
    ),
    # inputs
    _json_case({}, "inputs must be a list of tensors", id="inputs-missing"),
    _json_case({"inputs": {"x": 1}}, "inputs must be a list of tensors", id="inputs-object"),
    _json_case({"inputs": None}, "inputs must be a list of tensors", id="inputs-null"),
    _json_case({"inputs": [1]}, "inputs[0] must be a JSON object", id="input-not-object"),
    _json_case(
        _document(_tensor(data=[1, 2]), {"datatype": "FP32", "shape": [1], "data": [1]}),
        "inputs[1].name must be a string",
        id="name-missing",
    ),
    _input_case(
        {"name": 5, "datatype": "FP32", "shape": [1], "data": [1]},
        "inputs[0].name must be a string",
        id="name-number",
    ),
    _json_case(
        _document(_tensor(data=[1, 2]), _tensor(data=[3, 4])),
        "duplicate input 'x'",
        id="duplicate-input",
    ),
    _input_case(
        {"name": "x", "shape": [1], "data": [1]},
        "input 'x': unknown datatype",
        f"expected one of {ALL_NAMES}",
        id="datatype-missing",
    ),
    _input_case(
        _tensor(datatype="FLOAT32", data=[1, 2]),
        f"input 'x': unknown datatype 'FLOAT32'; expected one of {ALL_NAMES}",
        id="datatype-unknown",
    ),
    _input_case(
        _tensor(datatype="fp32", data=[1, 2]),
        "input 'x': unknown datatype 'fp32'",
        id="datatype-lower-case",
    ),
    _input_case(
        {"name": "x", "datatype": "FP32", "data": [1]},
        "input 'x': shape must be a list of at most 32 non-negative integers",
        id="shape-missing",
    ),
    _input_case(
        _tensor(shape=[-1], data=[1]),
        "input 'x': shape must be a list of at most 32 non-negative integers",
        id="shape-negative",
    ),
    _input_case(
        _tensor(shape=[2.0], data=[1, 2]),
        "input 'x': shape must be a list of at most 32 non-negative integers",
        id="shape-float",
    ),
    _input_case(
        {"name": "x", "datatype": "FP32", "shape": "2", "data": [1, 2]},
        "input 'x': shape must be a list of at most 32 non-negative integers",
        id="shape-string",
    ),
    _input_case(_tensor(), "input 'x' has no data", id="data-missing"),
    # element counts
    _input_case(
        _tensor(shape=[2, 2], data=[1, 2, 3, 4, 5, 6]),
        "input 'x': shape [2, 2] needs 4 elements, data has 6",
        id="count-flat-plus-2",
    ),
    _input_case(
        _tensor(shape=[2, 2], data=[[1, 2], [3, 4], [5, 6]]),
        "input 'x': shape [2, 2] needs 4 elements, data has 6",
        id="count-nested-plus-2",
    ),
    _input_case(
        _tensor(datatype="BYTES", shape=[2, 2], data=["a", "b", "c", "d", "e", "f"]),
        "input 'x': shape [2, 2] needs 4 elements, data has 6",
        id="count-bytes-plus-2",
    ),
    _input_case(
        _tensor(datatype="BOOL", shape=[3], data=[True]),
        "input 'x': shape [3] needs 3 elements, data has 1",
        id="count-short",
    ),
    _input_case(
        _tensor(shape=[2], data=5),
        "input 'x': shape [2] needs 2 elements, data has 1",
        id="count-bare-value",
    ),
    _input_case(
        _tensor(shape=[1], data=[]),
        "input 'x': shape [1] needs 1 elements, data has 0",
        id="count-empty-data",
    ),
    # ragged and over-deep nesting
    _input_case(
        _tensor(shape=[3], data=[[1, 2], [3]]),
        "input 'x': data is ragged; nested lists must be rectangular",
        id="ragged-fp32",
    ),
    _input_case(
        _tensor(datatype="INT32", shape=[3], data=[[1, 2], 3]),
        "input 'x': data is ragged; nested lists must be rectangular",
        id="ragged-int32-mixed-depth",
    ),
    _input_case(
        _tensor(datatype="BOOL", shape=[3], data=[[True], [False, True]]),
        "input 'x': data is ragged; nested lists must be rectangular",
        id="ragged-bool",
    ),
    _input_case(
        _tensor(datatype="BYTES", shape=[3], data=[["a", "b"], ["c"]]),
        "input 'x': data is ragged; nested lists must be rectangular",
        id="ragged-bytes",
    ),
    _input_case(
        _tensor(datatype="BYTES", shape=[3], data=[["a", "b"], "c"]),
        "input 'x': data is ragged; nested lists must be rectangular",
        id="ragged-bytes-mixed-depth",
    ),
    _input_case(
        _tensor(
            datatype="BYTES",
            shape=[1],
            data=_nested("a", depth=40),
        ),
        "input 'x': data is nested too deeply",
        id="bytes-nested-too-deeply",
    ),
    # JSON values of the wrong kind
    _input_case(
        _tensor(data=["1.0", "2.0"]), "input 'x': FP32 data must be numbers", id="fp32-strings"
    ),
    _input_case(
        _tensor(datatype="FP64", data=[None, 1]),
        "input 'x': FP64 data must be numbers",
        id="fp64-null",
    ),
    _input_case(
        _tensor(data=[True, False]), "input 'x': FP32 data must be numbers", id="fp32-booleans"
    ),
    _input_case(
        _tensor(datatype="FP16", data=[{}, {}]),
        "input 'x': FP16 data must be numbers",
        id="fp16-objects",
    ),
    _input_case(
        _tensor(data=[0.5, True]),
        "input 'x': FP32 data must be numbers",
        id="fp32-number-and-boolean",
    ),
    _input_case(
        _tensor(datatype="INT32", data=[1.5, 2]),
        "input 'x': INT32 data must be integers",
        id="int32-floats",
    ),
    _input_case(
        _tensor(datatype="INT32", data=[1.0, 2.0]),
        "input 'x': INT32 data must be integers",
        id="int32-integral-floats",
    ),
    _input_case(
        _tensor(datatype="INT64", data=[True, False]),
        "input 'x': INT64 data must be integers",
        id="int64-booleans",
    ),
    _input_case(
        _tensor(datatype="INT32", data=[1, True]),
        "input 'x': INT32 data must be integers",
        id="int32-integer-and-boolean",
    ),
    _input_case(
        _tensor(datatype="UINT8", data=["1", "2"]),
        "input 'x': UINT8 data must be integers",
        id="uint8-strings",
    ),
    _input_case(
        _tensor(datatype="BOOL", data=[1, 0]),
        "input 'x': BOOL data must be booleans",
        id="bool-numbers",
    ),
    _input_case(
        _tensor(datatype="BOOL", data=[0.0, 1.0]),
        "input 'x': BOOL data must be booleans",
        id="bool-floats",
    ),
    _input_case(
        _tensor(datatype="BOOL", data=["true", "false"]),
        "input 'x': BOOL data must be booleans",
        id="bool-strings",
    ),
    _input_case(
        _tensor(datatype="BOOL", data=[True, 1]),
        "input 'x': BOOL data must be booleans",
        id="bool-boolean-and-number",
    ),
    _input_case(
        _tensor(datatype="BYTES", data=[1, 2]),
        "input 'x': BYTES data must be strings",
        id="bytes-numbers",
    ),
    _input_case(
        _tensor(datatype="BYTES", data=["a", None]),
        "input 'x': BYTES data must be strings",
        id="bytes-null",
    ),
    # values outside the datatype's range
    *(
        _input_case(
            _tensor(datatype=datatype, shape=[1], data=[value]),
            f"input 'x': a value is outside the range of {datatype}",
            id=f"{datatype.lower()}-{value}",
        )
        for datatype, value in [
            ("INT8", 300),
            ("INT8", -129),
            ("UINT8", 300),
            ("UINT8", -1),
            ("INT16", 32768),
            ("UINT16", 65536),
            ("UINT16", -1),
            ("INT32", 2**31),
            ("INT32", -(2**31) - 1),
            ("UINT32", 2**32),
            ("UINT32", -1),
            ("INT64", 2**63),
            ("UINT64", -1),
        ]
    ),
    _input_case(
        _tensor(datatype="INT8", shape=[3], data=[1, 300, 2]),
        "input 'x': a value is outside the range of INT8",
        id="int8-one-bad-among-good",
    ),
    _input_case(
        _tensor(datatype="UINT64", data=[-1, 2**64 - 1]),
        "input 'x': a value is outside the range of UINT64",
        id="uint64-negative-beside-huge",
    ),
    _input_case(
        _tensor(datatype="INT64", data=[-1, 2**63]),
        "input 'x': a value is outside the range of INT64",
        id="int64-too-big-beside-negative",
    ),
    _input_case(
        _tensor(datatype="FP32", shape=[1], data=[1e39]),
        "input 'x': a value is outside the range of FP32",
        id="fp32-1e39",
    ),
    _input_case(
        _tensor(datatype="FP16", shape=[1], data=[70000]),
        "input 'x': a value is outside the range of FP16",
        id="fp16-70000",
    ),
    # the binary extension
    pytest.param(
        b'{"inputs": []}',
        100,
        ["Inference-Header-Content-Length is 100 but the body has only 14 bytes"],
        id="header-length-past-body",
    ),
    pytest.param(b'{"inputs": []}', 0, ["expected a JSON object"], id="header-length-zero"),
    pytest.param(b'{"inputs": []}', 5, ["malformed JSON:"], id="header-length-cuts-json"),
    _binary_case(
        _document(_tensor(parameters={"binary_data_size": 8})),
        b"\x00" * 4,
        "input 'x': binary_data_size 8 runs past the end of the body (4 binary bytes left)",
        id="binary-overrun",
    ),
    _binary_case(
        _document(
            _tensor("a", shape=[1], parameters={"binary_data_size": 4}),
            _tensor("b", shape=[2], parameters={"binary_data_size": 8}),
        ),
        b"\x00" * 8,
        "input 'b': binary_data_size 8 runs past the end of the body (4 binary bytes left)",
        id="binary-second-input-overruns",
    ),
    _json_case(
        _document(_tensor(parameters={"binary_data_size": 8})),
        "input 'x': binary_data_size 8 runs past the end of the body (0 binary bytes left)",
        id="binary-size-without-header",
    ),
    _binary_case(
        _document(_tensor(shape=[1], parameters={"binary_data_size": 4})),
        b"\x00" * 8,
        "the binary inputs declare 4 bytes but 8 follow the JSON header",
        id="binary-left-over",
    ),
    _binary_case(
        _document(_tensor(data=[1, 2])),
        b"\x00" * 3,
        "the binary inputs declare 0 bytes but 3 follow the JSON header",
        id="binary-bytes-nobody-claims",
    ),
    _binary_case(
        _document(_tensor(shape=[2], parameters={"binary_data_size": 4})),
        b"\x00" * 4,
        "input 'x': shape [2] of FP32 needs 8 bytes, got 4",
        id="binary-size-not-the-shape",
    ),
    _binary_case(
        _document(_tensor(datatype="BYTES", shape=[1], parameters={"binary_data_size": 6})),
        struct.pack("<I", 10) + b"ab",
        "input 'x': BYTES element 0 claims 10 bytes; only 2 remain",
        id="binary-bytes-truncated",
    ),
    _binary_case(
        _document(_tensor(data=[1, 2], parameters={"binary_data_size": 8})),
        b"\x00" * 8,
        "input 'x': give either data or binary_data_size, not both",
        id="data-and-binary-size",
    ),
    *(
        _binary_case(
            _document(_tensor(parameters={"binary_data_size": size})),
            b"\x00" * 8,
            "input 'x': binary_data_size must be a non-negative integer",
            id=f"binary-size-{name}",
        )
        for name, size in [("negative", -1), ("float", 8.0), ("boolean", True), ("string", "8")]
    ),
    # parameters
    _json_case(
        _document(_tensor(data=[1, 2]), parameters=[1]),
        "parameters must be a JSON object",
        id="parameters-list",
    ),
    _json_case(
        _document(_tensor(data=[1, 2]), parameters={"p": [1]}),
        "parameters: 'p' must be a boolean, number or string",
        id="parameter-list-value",
    ),
    _json_case(
        _document(_tensor(data=[1, 2]), parameters={"p": None}),
        "parameters: 'p' must be a boolean, number or string",
        id="parameter-null-value",
    ),
    _input_case(
        _tensor(data=[1, 2], parameters="binary"),
        "input 'x' parameters must be a JSON object",
        id="input-parameters-string",
    ),
    _input_case(
        _tensor(data=[1, 2], parameters={"q": {"a": 1}}),
        "input 'x' parameters: 'q' must be a boolean, number or string",
        id="input-parameter-object-value",
    ),
    *(
        _json_case(
            _document(_tensor(data=[1, 2]), parameters={"timeout": timeout}),
            "parameters: 'timeout' must be a non-negative integer (microseconds)",
            id=f"timeout-{name}",
        )
        for name, timeout in [("negative", -1), ("float", 1.5), ("string", "10"), ("bool", True)]
    ),
    _json_case(
        _document(_tensor(data=[1, 2]), parameters={"routing_key": 7}),
        "parameters: 'routing_key' must be a string",
        id="routing-key-number",
    ),
    # requested outputs
    _json_case(
        _document(_tensor(data=[1, 2]), outputs={"name": "y"}),
        "outputs must be a list",
        id="outputs-object",
    ),
    _json_case(
        _document(_tensor(data=[1, 2]), outputs=["y"]),
        "outputs[0].name must be a string",
        id="output-not-object",
    ),
    _json_case(
        _document(_tensor(data=[1, 2]), outputs=[{"name": "y"}, {}]),
        "outputs[1].name must be a string",
        id="output-name-missing",
    ),
    _json_case(
        _document(_tensor(data=[1, 2]), outputs=[{"name": "y"}, {"name": "y"}]),
        "duplicate output 'y'",
        id="duplicate-output",
    ),
    _json_case(
        _document(_tensor(data=[1, 2]), outputs=[{"name": "y", "parameters": 1}]),
        "output 'y' parameters must be a JSON object",
        id="output-parameters-number",
    ),
    _json_case(
        _document(
            _tensor(data=[1, 2]), outputs=[{"name": "y", "parameters": {"classification": 3}}]
        ),
        "the classification extension is not supported",
        id="classification",
    ),
    *(
        _json_case(
            _document(
                _tensor(data=[1, 2]), outputs=[{"name": "y", "parameters": {"binary_data": value}}]
            ),
            "output 'y': binary_data must be true or false",
            id=f"binary-data-{name}",
        )
        for name, value in [("number", 1), ("string", "true")]
    ),
]


@pytest.mark.parametrize(("body", "header_length", "fragments"), BODY_ERRORS)
def test_bad_requests_are_refused_saying_what_was_expected_and_what_came(
    body: bytes, header_length: int | None, fragments: list[str]
) -> None:
    message = _refusal(body, header_length)
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("datatype", "shape", "binary"),
    [
        pytest.param("FP32", [0, 2**62], False, id="json-fp32-0x2^62"),
        pytest.param("BYTES", [2**31, 2**31, 0], False, id="json-bytes-2^31x2^31x0"),
        pytest.param("INT32", [0, 2**62], True, id="binary-int32-0x2^62"),
        pytest.param("BYTES", [0, 2**62], True, id="binary-bytes-0x2^62"),
    ],
)
def test_a_zero_element_shape_with_huge_dimensions_is_decoded_or_refused(
    datatype: str, shape: list[int], binary: bool
) -> None:
    """The element count is 0, so the size checks pass; numpy cannot hold the shape anyway. The
    client must get a 400 (InvalidInput), not a 500 from a ValueError."""
    fields: dict[str, Any] = {"parameters": {"binary_data_size": 0}} if binary else {"data": []}
    body = orjson.dumps(_document(_tensor(datatype=datatype, shape=shape, **fields)))
    outcome = _decode_or_refusal(body, len(body) if binary else None)
    if isinstance(outcome, InvalidInput):
        assert "input 'x'" in outcome.message
    else:
        assert outcome.request.inputs["x"].shape == tuple(shape)


# --- encode_response -------------------------------------------------------------------------


def test_json_response_names_the_model_version_and_request() -> None:
    encoded = encode_response(
        _response({"y": np.array([[1.5, 2.5]], dtype=np.float32)}, version="7"), "req-9", _wanting()
    )

    assert encoded.header_length is None
    assert orjson.loads(encoded.body) == {
        "model_name": "mlp",
        "model_version": "7",
        "id": "req-9",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}],
    }


# (datatype, values): what each datatype looks like as JSON data.
JSON_OUTPUT_CASES = [
    pytest.param("BOOL", [True, False], id="BOOL"),
    pytest.param("UINT8", [0, 255], id="UINT8"),
    pytest.param("UINT16", [0, 65535], id="UINT16"),
    pytest.param("UINT32", [0, 2**32 - 1], id="UINT32"),
    pytest.param("UINT64", [0, 2**64 - 1], id="UINT64"),
    pytest.param("INT8", [-128, 127], id="INT8"),
    pytest.param("INT16", [-32768, 32767], id="INT16"),
    pytest.param("INT32", [-(2**31), 2**31 - 1], id="INT32"),
    pytest.param("INT64", [-(2**63), 2**63 - 1], id="INT64"),
    pytest.param("FP16", [0.5, -65504.0], id="FP16"),
    pytest.param("FP32", [0.1, -3.4028234663852886e38], id="FP32"),
    pytest.param("FP64", [0.1, 5e-324], id="FP64"),
]


@pytest.mark.parametrize(("datatype", "values"), JSON_OUTPUT_CASES)
def test_json_output_of_every_numeric_datatype(datatype: str, values: list[Any]) -> None:
    array = np.array(values, dtype=DATATYPES[datatype].dtype)

    output = orjson.loads(encode_response(_response({"y": array}), "", _wanting()).body)["outputs"][
        0
    ]

    assert output["datatype"] == datatype
    assert output["shape"] == [2]
    np.testing.assert_array_equal(np.array(output["data"], dtype=array.dtype), array)
    if datatype == "BOOL":
        assert output["data"] == [True, False]


def test_json_output_is_flat_row_major_whatever_the_layout() -> None:
    array = np.arange(6, dtype=np.int64).reshape(2, 3).T  # not C-contiguous
    output = orjson.loads(encode_response(_response({"y": array}), "", _wanting()).body)["outputs"][
        0
    ]
    assert output["shape"] == [3, 2]
    assert output["data"] == [0, 3, 1, 4, 2, 5]


def test_json_scalar_output() -> None:
    output = orjson.loads(
        encode_response(_response({"y": np.array(3, dtype=np.int32)}), "", _wanting()).body
    )["outputs"][0]
    assert output["shape"] == []
    assert output["data"] == [3]


def test_bytes_output_as_json_strings() -> None:
    array = np.array([["héllo", b"raw"], [b"", b"bad\xff"]], dtype=object)

    output = orjson.loads(encode_response(_response({"y": array}), "", _wanting()).body)["outputs"][
        0
    ]

    assert output == {
        "name": "y",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["héllo", "raw", "", "bad\ufffd"],
    }


@pytest.mark.parametrize("dtype", [pytest.param(">f4", id="FP32"), pytest.param(">i4", id="INT32")])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_big_endian_outputs_are_encoded(dtype: str, binary: bool) -> None:
    """output_datatype accepts big-endian arrays, so both ways of sending them must work."""
    array = np.array([1, -2, 3], dtype=dtype)
    encoded = encode_response(_response({"y": array}), "", _wanting(default=binary))
    if binary:
        assert encoded.header_length is not None
        assert (
            encoded.body[encoded.header_length :]
            == array.astype(array.dtype.newbyteorder("<")).tobytes()
        )
    else:
        assert orjson.loads(encoded.body)["outputs"][0]["data"] == [1, -2, 3]


def test_binary_outputs_follow_the_json_header() -> None:
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    labels = np.array([1], dtype=np.int64)
    text = np.array([b"ab", "ç"], dtype=object)

    encoded = encode_response(
        _response({"probs": probabilities, "label": labels, "text": text}),
        "7",
        _wanting({"probs": True, "text": True}),
    )

    assert encoded.header_length is not None
    header = orjson.loads(encoded.body[: encoded.header_length])
    assert header["id"] == "7"
    assert header["outputs"] == [
        {
            "name": "probs",
            "datatype": "FP32",
            "shape": [1, 2],
            "parameters": {"binary_data_size": 8},
        },
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]},
        {
            "name": "text",
            "datatype": "BYTES",
            "shape": [2],
            "parameters": {"binary_data_size": 4 + 2 + 4 + 2},
        },
    ]
    assert encoded.body[encoded.header_length :] == (
        struct.pack("<2f", 0.25, 0.75) + _length_prefixed(b"ab", "ç".encode())
    )


@pytest.mark.parametrize(("datatype", "values"), JSON_OUTPUT_CASES)
def test_binary_output_of_every_numeric_datatype_decodes_back(
    datatype: str, values: list[Any]
) -> None:
    """A response's binary part, fed to the request decoder, gives the same tensor."""
    array = np.array(values, dtype=DATATYPES[datatype].dtype).reshape(1, 2)
    encoded = encode_response(_response({"y": array}), "", _wanting(default=True))
    assert encoded.header_length is not None
    output = orjson.loads(encoded.body[: encoded.header_length])["outputs"][0]
    blob = encoded.body[encoded.header_length :]
    assert output["parameters"] == {"binary_data_size": len(blob)}

    body, header_length = _binary_body(
        _document(
            _tensor("y", output["datatype"], output["shape"], parameters=output["parameters"])
        ),
        blob,
    )
    decoded = decode_request(body, header_length, "mlp", None).request.inputs["y"]
    assert decoded.tobytes() == array.tobytes()


def test_output_of_a_dtype_that_is_not_served_is_a_fault() -> None:
    with pytest.raises(RuntimeError, match="output 'y' has dtype complex64, which is not served"):
        encode_response(_response({"y": np.zeros(2, dtype=np.complex64)}), "", _wanting())


# --- numeric precision through JSON ----------------------------------------------------------

FLOAT32_EDGES = [
    0.1,
    1 / 3,
    -0.0,
    16777217.0,  # not a float32; rounds to 16777216
    float(np.finfo(np.float32).max),
    -float(np.finfo(np.float32).max),
    float(np.finfo(np.float32).tiny),  # smallest normal
    1e-45,  # smallest subnormal
    3.1415927,
    123456.789,
]


def _json_round_trip(array: np.ndarray) -> np.ndarray:
    """An output sent as JSON, read by a client, and sent back as an input of the same type."""
    output = orjson.loads(encode_response(_response({"y": array}), "", _wanting()).body)["outputs"][
        0
    ]
    return _decode(
        _document(_tensor("y", output["datatype"], output["shape"], data=output["data"]))
    ).request.inputs["y"]


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        pytest.param(np.float32, FLOAT32_EDGES, id="FP32"),
        pytest.param(
            np.float64,
            [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, 2**53 + 1.0],
            id="FP64",
        ),
        pytest.param(np.float16, [0.1, 1 / 3, -0.0, 6e-08, 65504.0, 0.000061035156], id="FP16"),
    ],
)
def test_floats_round_trip_exactly_through_json(dtype: Any, values: list[float]) -> None:
    array = np.array(values, dtype=dtype)
    assert _json_round_trip(array).tobytes() == array.tobytes()


@PROPERTY
@given(
    values=st.lists(
        st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=16
    )
)
def test_any_finite_float32_round_trips_exactly_through_json(values: list[float]) -> None:
    array = np.array(values, dtype=np.float32)
    assert _json_round_trip(array).tobytes() == array.tobytes()


# --- properties: decode never fails in any other way than InvalidInput -----------------------


def _decode_or_refusal(body: bytes, header_length: int | None) -> HttpInferRequest | InvalidInput:
    """What decode_request makes of a body: a request, or the refusal."""
    try:
        return decode_request(body, header_length, "mlp", None)
    except InvalidInput as error:
        return error


def _decode_or_refuse(body: bytes, header_length: int | None) -> None:
    outcome = _decode_or_refusal(body, header_length)
    if isinstance(outcome, InvalidInput):
        assert outcome.message
        return
    for name, array in outcome.request.inputs.items():
        assert isinstance(name, str)
        assert isinstance(array, np.ndarray)


@PROPERTY
@given(body=st.binary(max_size=256), header=st.none() | st.integers(min_value=0, max_value=300))
def test_random_bytes_are_decoded_or_refused(body: bytes, header: int | None) -> None:
    _decode_or_refuse(body, header)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@PROPERTY
@given(document=_JSON)
def test_random_json_documents_are_decoded_or_refused(document: Any) -> None:
    _decode_or_refuse(orjson.dumps(document), None)


def _mostly(draw: st.DrawFn, usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """Nine times in ten a value from ``usual``, else one from ``odd``: requests that are mostly
    well-formed reach the deeper checks."""
    return draw(odd) if draw(st.integers(0, 9)) == 9 else draw(usual)


_HUGE_DIMS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "BOOL": st.booleans(),
    "FP16": st.floats(allow_nan=False, allow_infinity=False),
    "FP32": st.floats(allow_nan=False, allow_infinity=False),
    "FP64": st.floats(allow_nan=False, allow_infinity=False),
    "BYTES": st.text(max_size=6),
}
_INTEGERS = st.integers(min_value=-300, max_value=300) | st.integers(
    min_value=-(2**63), max_value=2**64 - 1
)


def _nest(flat: list[Any], shape: list[int]) -> Any:
    """A flat list as nested lists of ``shape`` (row-major)."""
    if len(shape) <= 1:
        return flat
    if shape[0] == 0:
        return []
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def _tensors(draw: st.DrawFn, name: str) -> tuple[dict[str, Any], bytes]:
    """One input (mostly well-formed) and the binary bytes it brings, if sent binary."""
    datatype = _mostly(draw, st.sampled_from(list(DATATYPES)), st.text(max_size=5) | _SCALARS)
    shape = _mostly(
        draw,
        st.lists(st.integers(min_value=0, max_value=3), max_size=3),
        st.lists(st.integers(min_value=0, max_value=3) | _HUGE_DIMS, max_size=4) | _JSON,
    )
    tensor: dict[str, Any] = {"datatype": datatype, "shape": shape}
    if draw(st.integers(0, 19)) < 19:
        tensor["name"] = _mostly(draw, st.just(name), st.text(max_size=3) | _SCALARS)
    small = isinstance(shape, list) and all(isinstance(dim, int) and 0 <= dim <= 3 for dim in shape)
    count = int(np.prod(shape)) if small else 2
    size = count if draw(st.integers(0, 4)) < 4 else draw(st.sampled_from([count + 2, count - 1]))
    size = max(size, 0)
    blob = b""
    mode = _mostly(draw, st.sampled_from(["data", "binary"]), st.sampled_from(["both", "none"]))
    if mode in ("data", "both"):
        if isinstance(datatype, str) and datatype in DATATYPES:
            usual = _ELEMENTS.get(datatype, _INTEGERS)
        else:
            usual = _SCALARS
        flat = draw(
            st.lists(_mostly(draw, st.just(usual), st.just(_SCALARS)), min_size=size, max_size=size)
        )
        tensor["data"] = _nest(flat, shape) if small and size == count else flat
    if mode in ("binary", "both"):
        if datatype == "BYTES":
            elements = draw(st.lists(st.binary(max_size=5), min_size=size, max_size=size))
            blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
        else:
            width = DATATYPES[datatype].dtype.itemsize if datatype in DATATYPES else 4
            blob = draw(st.binary(min_size=size * width, max_size=size * width))
        declared = _mostly(draw, st.just(len(blob)), _SCALARS | st.integers(-1, 64))
        tensor["parameters"] = {"binary_data_size": declared}
    if draw(st.integers(0, 9)) == 9:
        tensor["parameters"] = draw(_PARAMETERS | _JSON)
    return tensor, blob


_PARAMETERS = st.dictionaries(
    st.sampled_from(["binary_data_size", "binary_data", "timeout", "routing_key", "p"]),
    _SCALARS | st.integers(min_value=-2, max_value=64) | _JSON,
    max_size=3,
)
_REQUEST_PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "timeout": st.integers(min_value=0, max_value=10**9),
        "routing_key": st.text(max_size=4),
        "binary_data_output": st.booleans(),
        "priority": st.integers(min_value=0, max_value=3),
    },
)
_OUTPUTS = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", "c"])},
        optional={"parameters": st.fixed_dictionaries({"binary_data": st.booleans()})},
    ),
    max_size=3,
    unique_by=lambda output: str(output["name"]),
)


@st.composite
def _request_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    names = _mostly(draw, st.just(["x", "y", "z"]), st.just(["x", "x", "y"]))
    tensors = [draw(_tensors(name)) for name in names[: draw(st.integers(0, 3))]]
    document: dict[str, Any] = {
        "inputs": _mostly(draw, st.just([tensor for tensor, _ in tensors]), _JSON)
    }
    if draw(st.booleans()):
        document["id"] = _mostly(draw, st.text(max_size=4), _SCALARS)
    if draw(st.booleans()):
        document["parameters"] = _mostly(draw, _REQUEST_PARAMETERS, _PARAMETERS | _JSON)
    if draw(st.booleans()):
        document["outputs"] = _mostly(draw, _OUTPUTS, _JSON)
    header = orjson.dumps(document)
    binary = b"".join(blob for _, blob in tensors)
    if not binary and draw(st.booleans()):
        return header, None
    binary += _mostly(draw, st.just(b""), st.binary(min_size=1, max_size=8))
    return header + binary, len(header)


@PROPERTY
@given(request=_request_bodies())
# Counterexamples found before, kept so that the outcome does not depend on what is generated.
@example(request=(orjson.dumps(_document(_tensor(datatype="FP16", shape=[], data=65520.0))), None))
@example(request=(orjson.dumps(_document(_tensor(shape=[0, 2**62], data=[]))), None))
def test_random_inference_requests_are_decoded_or_refused(
    request: tuple[bytes, int | None],
) -> None:
    _decode_or_refuse(*request)
