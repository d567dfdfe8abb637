"""Property-based fuzzing of the three request decoders, at unit level:

1. the HTTP JSON tensor decoder (server/http/codec.py ``decode_request`` without binary data,
   server/http/json_tensors.py ``decode_json_data``);
2. the binary tensor data extension (``decode_request`` with a header length, and the
   ``Inference-Header-Content-Length`` value as server/http/infer.py reads it);
3. the gRPC converter (server/grpc/codec.py ``decode_request``), typed contents and raw.

The property for every input whatsoever: the decoder returns a well-formed request whose tensors
have the declared datatype and shape, or it raises InvalidInput (400 / INVALID_ARGUMENT) with a
short message; never any other exception. Valid generated tensors round-trip exactly. Decoded
requests then go through the model's signature check, which may also only refuse with
InvalidInput.

Bounded and derandomized like the rest of the suite: the same examples every run, seconds in all.
"""

import json
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import orjson
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from turnout.errors import InvalidInput, UnsupportedMediaType
from turnout.models.datatypes import DATATYPES, Datatype, datatype_of_array
from turnout.models.types import ModelRequest, ModelSignature, TensorSpec
from turnout.models.validation import validate_request
from turnout.protos import inference_pb2 as pb
from turnout.router.types import InferenceRequest
from turnout.server.grpc import codec as grpc_codec
from turnout.server.http import codec as http_codec
from turnout.server.http.infer import HEADER_LENGTH, _header_length
from turnout.server.http.json_tensors import decode_json_data
from turnout.server.tensors import MAX_RANK

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A refusal names only public things and stays short whatever came in (BAD_INPUTS #36).
MAX_MESSAGE = 2048
ENDPOINT = "mlp"
DATATYPE_NAMES = list(DATATYPES)
_T = TypeVar("_T")


# --- the property ----------------------------------------------------------------------------


def _decoded_or_refused(decode: Callable[[], _T]) -> _T | None:
    """What ``decode`` returns, or None when it refuses with InvalidInput. Any other exception
    escapes and fails the test: the transports would answer it 500 / INTERNAL."""
    try:
        return decode()
    except InvalidInput as error:
        refusal = error
    assert not isinstance(refusal, UnsupportedMediaType), refusal.message
    assert isinstance(refusal.message, str)
    assert 0 < len(refusal.message) <= MAX_MESSAGE, refusal.message[:200]
    assert "Traceback" not in refusal.message
    return None


def _check_tensors(inputs: dict[str, np.ndarray]) -> None:
    for name, array in inputs.items():
        assert isinstance(name, str)
        assert isinstance(array, np.ndarray)
        datatype = datatype_of_array(array)
        assert datatype is not None, array.dtype
        assert array.ndim <= MAX_RANK
        if datatype.is_bytes:
            assert all(isinstance(element, bytes) for element in array.reshape(-1))


def _check_request(request: InferenceRequest) -> None:
    """A decoded request is one the rest of Turnout can take without re-checking types."""
    assert isinstance(request.endpoint, str)
    assert isinstance(request.request_id, str)
    _check_tensors(request.inputs)
    if request.requested_outputs is not None:
        assert isinstance(request.requested_outputs, tuple)
        assert all(isinstance(name, str) for name in request.requested_outputs)
        assert len(set(request.requested_outputs)) == len(request.requested_outputs)
    assert all(isinstance(key, str) for key in request.parameters)
    assert all(isinstance(value, bool | int | float | str) for value in request.parameters.values())
    assert request.routing_key is None or isinstance(request.routing_key, str)
    assert request.deadline is None or (
        isinstance(request.deadline, float) and math.isfinite(request.deadline)
    )


def _check_declared(array: np.ndarray, datatype: Any, shape: Any) -> None:
    """An accepted tensor has exactly the datatype and shape the request declared."""
    assert isinstance(datatype, str)
    assert datatype in DATATYPES
    assert array.dtype == DATATYPES[datatype].dtype
    assert array.shape == tuple(shape)


def _decode_http(body: bytes, header_length: int | None) -> http_codec.HttpInferRequest | None:
    decoded = _decoded_or_refused(
        lambda: http_codec.decode_request(body, header_length, ENDPOINT, None)
    )
    if decoded is None:
        return None
    _check_request(decoded.request)
    assert all(isinstance(choice, bool) for choice in decoded.binary_choices.values())
    assert isinstance(decoded.binary_by_default, bool)
    # Every input the body declares is there, with its declared datatype and shape.
    header = body if header_length is None else body[:header_length]
    document = orjson.loads(header)
    assert len(document["inputs"]) == len(decoded.request.inputs)
    for item in document["inputs"]:
        array = decoded.request.inputs[item["name"]]
        _check_declared(array, item["datatype"], item["shape"])
        if "data" in item and array.dtype.kind == "f":
            # JSON cannot spell inf or nan, so no finite number may turn into one (1e39 is not
            # an FP32).
            assert np.isfinite(array).all(), item["data"]
        if "data" in item and array.dtype.kind in "biu":
            flat = item["data"] if isinstance(item["data"], list) else [item["data"]]
            assert array.reshape(-1).tolist() == list(_flatten(flat))
    return decoded


def _decode_grpc(
    message: pb.ModelInferRequest, remaining_s: float | None = None, key: str | None = None
) -> InferenceRequest | None:
    request = _decoded_or_refused(lambda: grpc_codec.decode_request(message, remaining_s, key))
    if request is None:
        return None
    _check_request(request)
    assert len(request.inputs) == len(message.inputs)
    for tensor in message.inputs:
        _check_declared(request.inputs[tensor.name], tensor.datatype, list(tensor.shape))
    return request


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def _nest(flat: Sequence[Any], shape: Sequence[int]) -> Any:
    """A flat row-major list as nested lists of ``shape`` (a scalar for shape [])."""
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def _length_prefixed(elements: Sequence[bytes]) -> bytes:
    """BYTES elements in the raw format, built independently of the code under test."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def _json_text(value: Any) -> bytes:
    """JSON text by the standard library, which also writes integers past 64 bits and NaN /
    Infinity tokens (orjson reads the first as floats and refuses the second)."""
    return json.dumps(value, allow_nan=True).encode()


# --- strategies: JSON ------------------------------------------------------------------------


def _mostly(
    usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any], one_in: int = 10
) -> st.SearchStrategy[Any]:
    """A value from ``odd`` one time in ``one_in``, else from ``usual``: requests that are mostly
    well-formed reach the deeper checks."""
    return st.integers(1, one_in).flatmap(lambda roll: odd if roll == 1 else usual)


# Past 64 bits orjson reads integers as floats (and 10**400 as an error, being infinite).
HUGE_INTEGERS = st.sampled_from(
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**30)]
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | HUGE_INTEGERS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


def _json_trees(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=8), children, max_size=5)
        ),
        max_leaves=25,
    )


JSON_VALUES = _json_trees(JSON_SCALARS)
# Anything the standard library writes: also NaN and Infinity tokens, and 10**400.
ANY_JSON = _json_trees(JSON_SCALARS | st.floats() | st.sampled_from([10**400, -(10**400)]))
NAMES = _mostly(st.sampled_from(["x", "y", "z"]), st.just("") | st.text(max_size=4), 5)
JUNK_DATATYPES = st.sampled_from(
    ["", "FLOAT32", "fp32", "Fp32", "BF16", "INT128", "STRING", "TYPE_FP32", "FP32 ", "bool"]
) | st.text(max_size=6)
DATATYPE_VALUES = _mostly(st.sampled_from(DATATYPE_NAMES), JUNK_DATATYPES | JSON_VALUES)
ODD_DIMS: st.SearchStrategy[Any] = st.sampled_from(
    [-1, -(2**63), 2**31, 2**40, 2**40 + 1, 2**63 - 1, 2**64 - 1, 2**64, 10**30]
) | st.sampled_from([1.0, 2.5, "2", True, False, None, [2], {}])
SHAPES = _mostly(
    st.lists(st.integers(0, 4), max_size=4),
    st.lists(st.integers(0, 4) | ODD_DIMS, max_size=5)
    | st.lists(st.integers(-2, 3), min_size=1, max_size=3)
    | st.integers(MAX_RANK - 1, MAX_RANK + 2).map(lambda rank: [1] * rank)
    | st.lists(st.just(0) | st.sampled_from([2**20, 2**40, 2**62]), min_size=2, max_size=4)
    | JSON_VALUES,
    4,
)
# Floats at the edges of FP16 and FP32: the largest finite value, what still rounds to it, what
# rounds to infinity; subnormals; signed zero.
EDGE_FLOATS = st.sampled_from(
    [
        65504.0,
        65519.99,
        65520.0,
        65536.0,
        3.4028234663852886e38,
        3.4028235677973362e38,
        3.4028235677973366e38,
        1e39,
        1.7976931348623157e308,
        5e-324,
        1e-46,
        6e-8,
        -0.0,
    ]
)


def _integer_range(datatype: Datatype) -> tuple[int, int]:
    info = np.iinfo(cast("np.dtype[np.integer[Any]]", datatype.dtype))
    return int(info.min), int(info.max)


def _json_elements(datatype: Any) -> st.SearchStrategy[Any]:
    """Mostly elements of the right kind for ``datatype`` (edges and just past them), sometimes
    any JSON scalar."""
    known = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if known is None:
        return JSON_SCALARS
    kind = known.dtype.kind
    right: st.SearchStrategy[Any]
    if kind == "b":
        right = st.booleans()
    elif kind in "iu":
        low, high = _integer_range(known)
        right = (
            st.integers(low, high) | st.sampled_from([low, high, low - 1, high + 1]) | HUGE_INTEGERS
        )
    elif kind == "f":
        right = (
            st.floats(allow_nan=False, allow_infinity=False)
            | st.integers(-(2**65), 2**65)
            | EDGE_FLOATS
        )
    else:
        right = st.text(max_size=8)
    return _mostly(right, JSON_SCALARS, 8)


def _small_count(shape: Any) -> int | None:
    """How many elements to send for a small shape: its element count, or for one with negative
    dimensions the count a decoder that let them through would compute (so that nothing else
    refuses the request first); None for shapes that are not small."""
    if not (isinstance(shape, list | tuple) and len(shape) <= 4):
        return None
    if not all(type(dim) is int and -2 <= dim <= 4 for dim in shape):
        return None
    return abs(math.prod(shape))


@st.composite
def _json_data(draw: st.DrawFn, datatype: Any, shape: Any) -> Any:
    """``data`` for a tensor: right in count and nesting, or off in count, nesting or kind."""
    elements = _json_elements(datatype)
    count = _small_count(shape)
    if count is None:
        return draw(st.lists(elements, max_size=4) | JSON_VALUES)
    size = max(count + draw(st.sampled_from([0, 0, 0, 0, 0, 1, -1, 2])), 0)
    flat = draw(st.lists(elements, min_size=size, max_size=size))
    layout = draw(
        st.sampled_from(["flat", "nested", "nested", "nested", "wrapped", "ragged", "junk"])
    )
    if layout == "nested" and size == count and min(shape, default=0) >= 0:
        return _nest(flat, shape) if shape or flat else flat
    if layout == "wrapped":
        data: Any = flat
        for _ in range(draw(st.integers(1, MAX_RANK + 3))):
            data = [data]
        return data
    if layout == "ragged" and flat:
        cut = draw(st.integers(0, len(flat)))
        return [flat[:cut], *flat[cut:]] if draw(st.booleans()) else [flat[:cut], flat[cut:]]
    if layout == "junk":
        return draw(JSON_VALUES)
    return flat


PARAMETER_KEYS = st.sampled_from(
    [
        "binary_data_size",
        "binary_data",
        "binary_data_output",
        "timeout",
        "routing_key",
        "classification",
        "shared_memory_region",
    ]
) | st.text(max_size=5)
PARAMETERS = st.dictionaries(PARAMETER_KEYS, _mostly(JSON_SCALARS, JSON_VALUES, 4), max_size=4)


@st.composite
def _json_tensors(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {}
    if draw(st.integers(0, 19)):
        tensor["name"] = draw(_mostly(NAMES, JSON_SCALARS, 20))
    datatype = draw(DATATYPE_VALUES)
    shape = draw(SHAPES)
    if draw(st.integers(0, 19)):
        tensor["datatype"] = datatype
    if draw(st.integers(0, 19)):
        tensor["shape"] = shape
    if draw(st.integers(0, 19)):
        tensor["data"] = draw(_json_data(datatype, shape))
    if draw(st.integers(0, 4)) == 0:
        tensor["parameters"] = draw(_mostly(PARAMETERS, JSON_VALUES))
    return tensor


OUTPUTS = st.lists(
    _mostly(
        st.fixed_dictionaries(
            {"name": _mostly(st.sampled_from(["out", "a", "a", ""]), JSON_SCALARS)},
            optional={"parameters": _mostly(PARAMETERS, JSON_VALUES)},
        ),
        JSON_VALUES,
    ),
    max_size=3,
)
REQUEST_PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "timeout": _mostly(st.integers(0, 10**9), HUGE_INTEGERS | JSON_SCALARS, 4),
        "routing_key": _mostly(st.text(max_size=4), JSON_SCALARS, 4),
        "binary_data_output": _mostly(st.booleans(), JSON_SCALARS, 4),
        "sequence_id": JSON_SCALARS,
    },
)


@st.composite
def _v2_documents(draw: st.DrawFn) -> dict[str, Any]:
    """V2 request bodies, mostly well-formed in outline and wrong in the details."""
    document: dict[str, Any] = {}
    if draw(st.integers(0, 19)):
        document["inputs"] = (
            draw(JSON_VALUES)
            if draw(st.integers(0, 9)) == 0
            else draw(st.lists(_json_tensors(), max_size=3))
        )
    if draw(st.booleans()):
        document["id"] = draw(
            _mostly(
                st.text(max_size=6),
                st.just("i" * (http_codec.MAX_ID_LENGTH + 1)) | JSON_SCALARS,
            )
        )
    if draw(st.booleans()):
        document["parameters"] = draw(_mostly(REQUEST_PARAMETERS, PARAMETERS | JSON_VALUES, 4))
    if draw(st.booleans()):
        document["outputs"] = draw(_mostly(OUTPUTS, JSON_VALUES))
    return document


def _deeply_nested(depth: int) -> bytes:
    return (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":'
        + b"[" * depth
        + b"1"
        + b"]" * depth
        + b"}]}"
    )


# --- strategies: valid tensors, for the round trips ------------------------------------------


@st.composite
def _arrays(draw: st.DrawFn, datatype: Datatype, *, finite: bool, utf8: bool) -> np.ndarray:
    """A tensor of ``datatype``; finite floats only where JSON must carry them, valid UTF-8
    BYTES only where JSON strings must."""
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    if datatype.is_bytes:
        count = math.prod(shape)
        element = st.text(max_size=6).map(str.encode) if utf8 else st.binary(max_size=6)
        values = draw(st.lists(element, min_size=count, max_size=count))
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    if datatype.dtype.kind == "f":
        elements = hnp.from_dtype(datatype.dtype, allow_nan=not finite, allow_infinity=not finite)
    else:
        elements = hnp.from_dtype(datatype.dtype)
    return draw(hnp.arrays(datatype.dtype, shape, elements=elements))


def _json_data_of(array: np.ndarray, datatype: Datatype, nested: bool) -> Any:
    """The V2 JSON ``data`` of a tensor, written independently of the code under test."""
    if datatype.is_bytes:
        flat: list[Any] = [element.decode() for element in array.reshape(-1)]
    else:
        flat = array.reshape(-1).tolist()
    if nested and array.shape:
        return _nest(flat, array.shape)
    return flat


def _raw_of(array: np.ndarray, datatype: Datatype) -> bytes:
    if datatype.is_bytes:
        return _length_prefixed(list(array.reshape(-1)))
    return array.astype(datatype.dtype).tobytes()


def _assert_same(out: np.ndarray, expected: np.ndarray, datatype: Datatype, bitwise: bool) -> None:
    assert out.dtype == datatype.dtype
    assert out.shape == expected.shape
    if datatype.is_bytes:
        assert out.reshape(-1).tolist() == expected.reshape(-1).tolist()
    elif bitwise or datatype.dtype.kind != "f":
        assert out.tobytes() == expected.tobytes()
    else:
        # Through a Python float a NaN may come back with another payload; the rest is exact.
        nan = np.isnan(expected)
        assert np.array_equal(np.isnan(out), nan)
        assert out[~nan].tobytes() == expected[~nan].tobytes()


TENSOR_NAMES = st.lists(st.text(max_size=6), min_size=1, max_size=3, unique=True)


# --- strategies: binary extension ------------------------------------------------------------


@st.composite
def _binary_bodies(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A binary-extension body, the header length the client would send, and the true one.
    Mostly the sizes add up; sometimes a size, a blob or the header length is wrong."""
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["x", "y", "z"]))
        datatype_name = draw(_mostly(st.sampled_from(DATATYPE_NAMES), JUNK_DATATYPES))
        shape = draw(_mostly(st.lists(st.integers(0, 3), max_size=3), SHAPES, 5))
        item: dict[str, Any] = {"name": name, "datatype": datatype_name, "shape": shape}
        datatype = DATATYPES.get(datatype_name)
        count = _small_count(shape)
        count = draw(st.integers(0, 3)) if count is None else count
        count = max(count + draw(st.sampled_from([0, 0, 0, 0, 1, -1])), 0)
        if datatype is not None and datatype.is_bytes and draw(st.integers(0, 4)):
            elements = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
            blob = _length_prefixed(elements)
        else:
            width = datatype.dtype.itemsize if datatype and not datatype.is_bytes else 4
            blob = draw(st.binary(min_size=count * width, max_size=count * width))
        mode = draw(st.sampled_from(["binary"] * 6 + ["json", "both", "neither"]))
        if mode in ("binary", "both"):
            size: Any = len(blob)
            if draw(st.integers(0, 5)) == 0:
                size = draw(
                    st.sampled_from([len(blob) + 1, len(blob) - 1, 0, -1, 10**6, 2**64 - 1])
                    | HUGE_INTEGERS
                    | st.sampled_from([1.0, 2.5, True, False, "8", None, [4], {}])
                )
            parameters = draw(PARAMETERS) if draw(st.integers(0, 9)) == 0 else {}
            item["parameters"] = {**parameters, "binary_data_size": size}
            blobs.append(blob)
        if mode in ("json", "both"):
            item["data"] = draw(_json_data(datatype_name, shape))
        items.append(item)
    document: dict[str, Any] = {"inputs": items}
    if draw(st.integers(0, 4)) == 0:
        document["parameters"] = draw(REQUEST_PARAMETERS)
    header = _json_text(document)
    trailing = draw(st.binary(min_size=1, max_size=8)) if draw(st.integers(0, 9)) == 0 else b""
    body = header + b"".join(blobs) + trailing
    header_length = len(header)
    if draw(st.integers(0, 5)) == 0:
        header_length = draw(
            st.integers(0, len(body) + 8)
            | st.sampled_from([0, len(header) - 1, len(header) + 1, len(body), len(body) + 1])
            | st.sampled_from([2**31, 2**63, 2**64, 10**30])
        )
        header_length = max(header_length, 0)
    return body, header_length, len(header)


# --- strategies: gRPC ------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
GRPC_DATATYPES = _mostly(st.sampled_from(DATATYPE_NAMES), JUNK_DATATYPES)
UINT64 = st.integers(0, 2**64 - 1)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": INT64,
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": UINT64,
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}
FIELDS = list(FIELD_VALUES)
GRPC_DIMS = _mostly(
    st.integers(0, 4),
    st.sampled_from([-1, -(2**63), 2**31, 2**40, 2**40 + 1, 2**62, 2**63 - 1]) | INT64,
    4,
)
GRPC_SHAPES = _mostly(
    st.lists(st.integers(0, 3), max_size=3),
    st.lists(GRPC_DIMS, max_size=5)
    | st.lists(st.integers(-2, 3), min_size=1, max_size=3)
    | st.integers(MAX_RANK - 1, MAX_RANK + 2).map(lambda rank: [1] * rank)
    | st.lists(st.just(0) | st.sampled_from([2**20, 2**40, 2**62]), min_size=2, max_size=4),
    5,
)


@st.composite
def _infer_parameters(draw: st.DrawFn) -> pb.InferParameter:
    choice = draw(st.sampled_from(["bool", "int64", "string", "double", "uint64", "none"]))
    if choice == "bool":
        return pb.InferParameter(bool_param=draw(st.booleans()))
    if choice == "int64":
        return pb.InferParameter(int64_param=draw(INT64 | st.integers(-2, 10**9)))
    if choice == "string":
        return pb.InferParameter(string_param=draw(st.text(max_size=6)))
    if choice == "double":
        return pb.InferParameter(double_param=draw(st.floats()))
    if choice == "uint64":
        return pb.InferParameter(uint64_param=draw(UINT64))
    return pb.InferParameter()


def _fill_parameters(draw: st.DrawFn, target: Any) -> None:
    keys = draw(st.lists(PARAMETER_KEYS, max_size=3, unique=True))
    for key in keys:
        target[key].CopyFrom(draw(_infer_parameters()))


@st.composite
def _infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """ModelInferRequests built field by field with junk values: shapes huge or negative, unknown
    datatypes, contents in the wrong field or of the wrong length, raw contents of the wrong
    length or count, both kinds of contents, duplicate names."""
    message = pb.ModelInferRequest(
        model_name=draw(st.text(max_size=4)),
        model_version=draw(st.sampled_from(["", "1"]) | st.text(max_size=3)),
        id=draw(st.text(max_size=6)),
    )
    if draw(st.integers(0, 3)) == 0:
        _fill_parameters(draw, message.parameters)
    use_raw = draw(st.booleans())
    raw: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        datatype_name = draw(GRPC_DATATYPES)
        shape = draw(GRPC_SHAPES)
        tensor = message.inputs.add(name=draw(NAMES), datatype=datatype_name, shape=shape)
        if draw(st.integers(0, 5)) == 0:
            _fill_parameters(draw, tensor.parameters)
        datatype = DATATYPES.get(datatype_name)
        count = _small_count(shape)
        count = draw(st.integers(0, 3)) if count is None else count
        count = max(count + draw(st.sampled_from([0, 0, 0, 0, 1, -1])), 0)
        typed = not use_raw or draw(st.integers(0, 6)) == 0
        if typed:
            mode = draw(st.sampled_from(["right"] * 5 + ["other", "empty", "none", "two"]))
            field = grpc_codec.CONTENTS_FIELD.get(datatype_name)
            if mode == "empty":
                tensor.contents.SetInParent()
            elif mode != "none":
                if field is None or mode != "right":
                    field = draw(st.sampled_from(FIELDS))
                values = draw(st.lists(FIELD_VALUES[field], min_size=count, max_size=count))
                getattr(tensor.contents, field).extend(values)
                if mode == "two":
                    other = draw(st.sampled_from(FIELDS))
                    getattr(tensor.contents, other).extend(
                        draw(st.lists(FIELD_VALUES[other], min_size=1, max_size=2))
                    )
        if use_raw:
            if datatype is not None and datatype.is_bytes and draw(st.integers(0, 4)):
                elements = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
                raw.append(_length_prefixed(elements))
            else:
                width = datatype.dtype.itemsize if datatype and not datatype.is_bytes else 4
                raw.append(draw(st.binary(min_size=count * width, max_size=count * width)))
    if use_raw:
        change = draw(st.sampled_from(["none"] * 6 + ["drop", "extra"]))
        if change == "drop" and raw:
            raw.pop(draw(st.integers(0, len(raw) - 1)))
        elif change == "extra":
            raw.append(draw(st.binary(max_size=8)))
        message.raw_input_contents.extend(raw)
    for _ in range(draw(st.integers(0, 2))):
        output = message.outputs.add(name=draw(st.sampled_from(["out", "a", "a", ""])))
        if draw(st.integers(0, 3)) == 0:
            _fill_parameters(draw, output.parameters)
    return message


@st.composite
def _mutated(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    """Bytes of a valid-looking message with a few bytes changed, inserted, cut or truncated."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if operation == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        elif operation == "truncate":
            del data[at:]
    return bytes(data)


@st.composite
def _valid_json_bodies(draw: st.DrawFn) -> bytes:
    names = draw(TENSOR_NAMES)
    inputs = []
    for name in names:
        datatype = DATATYPES[draw(st.sampled_from(DATATYPE_NAMES))]
        array = draw(_arrays(datatype, finite=True, utf8=True))
        data = _json_data_of(array, datatype, draw(st.booleans()))
        inputs.append({"name": name, "datatype": datatype.name, "shape": array.shape, "data": data})
    return orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY)


# --- 1. the HTTP JSON tensor decoder ---------------------------------------------------------


@FUZZ
@given(
    body=st.binary(max_size=300)
    | _mutated(_valid_json_bodies())
    | (st.integers(0, 1100) | st.integers(1015, 1030)).map(_deeply_nested),
    header_length=st.none() | st.integers(0, 320) | st.sampled_from([2**31, 2**64]),
)
def test_http_decoder_returns_a_request_or_invalid_input_for_any_bytes(
    body: bytes, header_length: int | None
) -> None:
    _decode_http(body, header_length)


def _decode_deep(depth: int) -> http_codec.HttpInferRequest:
    return http_codec.decode_request(_deeply_nested(depth), None, ENDPOINT, None)


@pytest.mark.parametrize("depth", [MAX_RANK, MAX_RANK + 1, 500, 990, 1000, 1021, 1022, 5000])
def test_http_decoder_takes_or_refuses_deep_nesting_without_recursing(depth: int) -> None:
    """Outside Hypothesis, which raises the recursion limit while a test runs: a decoder that
    recursed once per level would fail here with RecursionError (orjson reads 1024 levels)."""
    decoded = _decoded_or_refused(lambda: _decode_deep(depth))
    assert decoded is None or depth <= MAX_RANK


@FUZZ
@given(value=ANY_JSON)
@example(value={"inputs": [], "parameters": {"timeout": 2**64 - 1}})
@example(value={"inputs": [], "parameters": {"timeout": 10**30}})
@example(value={"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [2**64]}]})
def test_http_decoder_returns_a_request_or_invalid_input_for_any_json(value: Any) -> None:
    _decode_http(_json_text(value), None)


@FUZZ
@given(document=_v2_documents())
@example(
    document={"inputs": [{"name": "x", "datatype": "UINT64", "shape": [2], "data": [-1, 2**63]}]}
)
@example(document={"inputs": [{"name": "x", "datatype": "FP16", "shape": [], "data": 65520}]})
@example(document={"inputs": [{"name": "x", "datatype": "FP32", "shape": [], "data": 2**64}]})
@example(document={"inputs": [{"name": "x", "datatype": "BYTES", "shape": [0, 2**40], "data": []}]})
def test_http_decoder_returns_a_request_or_invalid_input_for_wrong_v2_bodies(
    document: dict[str, Any],
) -> None:
    _decode_http(_json_text(document), None)


@st.composite
def _json_data_cases(draw: st.DrawFn) -> tuple[Datatype, list[int], Any]:
    datatype = draw(st.sampled_from(list(DATATYPES.values())))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    return datatype, shape, draw(_json_data(datatype.name, shape))


@FUZZ
@given(case=_json_data_cases())
@example(case=(DATATYPES["FP64"], [1], [10**400]))
@example(case=(DATATYPES["FP16"], [2], [10**400, 1.5]))
@example(case=(DATATYPES["INT64"], [2], [-(10**400), 10**400]))
@example(case=(DATATYPES["UINT64"], [2], [[-1], [2**64]]))
def test_json_data_decoder_returns_a_tensor_or_invalid_input_for_any_values(
    case: tuple[Datatype, list[int], Any],
) -> None:
    # Straight from Python, so also integers beyond 64 bits that orjson would never hand over.
    datatype, shape, value = case
    array = _decoded_or_refused(lambda: decode_json_data(value, datatype, tuple(shape), "input"))
    if array is not None:
        _check_tensors({"input": array})
        _check_declared(array, datatype.name, shape)


@FUZZ
@given(data=st.data(), names=TENSOR_NAMES)
def test_json_tensors_round_trip_exactly(data: st.DataObject, names: list[str]) -> None:
    expected: dict[str, tuple[Datatype, np.ndarray]] = {}
    items = []
    for name in names:
        datatype = data.draw(st.sampled_from(list(DATATYPES.values())))
        array = data.draw(_arrays(datatype, finite=True, utf8=True))
        nested = data.draw(st.booleans())
        expected[name] = (datatype, array)
        items.append(
            {
                "name": name,
                "datatype": datatype.name,
                "shape": list(array.shape),
                "data": _json_data_of(array, datatype, nested),
            }
        )
    decoded = http_codec.decode_request(orjson.dumps({"inputs": items}), None, ENDPOINT, None)
    assert list(decoded.request.inputs) == names
    for name, (datatype, array) in expected.items():
        _assert_same(decoded.request.inputs[name], array, datatype, bitwise=True)


# --- 2. the binary tensor data extension -----------------------------------------------------


@FUZZ
@given(body=_binary_bodies())
@example(body=(b'{"inputs":[]}', 2**64, 13))
@example(body=(b'{"inputs":[]}\x00', 13, 13))
def test_binary_extension_returns_a_request_or_invalid_input(
    body: tuple[bytes, int, int],
) -> None:
    content, header_length, _ = body
    _decode_http(content, header_length)


HEADER_LENGTH_VALUES = st.one_of(
    st.integers(0, 400).map(str),
    st.sampled_from(["", "-1", "+5", " 5", "5 ", "0x10", "1e3", "5.0", "\u0661\u0662", "\u00b2"])
    | st.sampled_from(["\U0001d7d3", str(2**64), str(10**30)]),
    st.text(max_size=8),
    # Long runs of digits: a header of a few KiB passes any HTTP server's header limits.
    st.integers(1, 6000).map(lambda digits: "1" * digits),
    st.sampled_from([4300, 4301, 10_000]).map(lambda digits: "0" * digits),
)


@FUZZ
@given(body=_binary_bodies(), zeros=st.integers(0, 3), value=st.none() | HEADER_LENGTH_VALUES)
@example(body=(b'{"inputs":[]}', 13, 13), zeros=0, value="1" * 4301)
@example(body=(b'{"inputs":[]}', 13, 13), zeros=0, value="9" * 4300)
def test_binary_extension_header_length_value_is_read_or_refused(
    body: tuple[bytes, int, int], zeros: int, value: str | None
) -> None:
    """The ``Inference-Header-Content-Length`` value as the client sent it (the true length,
    perhaps with leading zeros, or anything else): read by server/http/infer.py, then the body
    split at it."""
    content, _, true_length = body
    sent = "0" * zeros + str(true_length) if value is None else value

    def decode() -> http_codec.HttpInferRequest:
        return http_codec.decode_request(
            content, _header_length({HEADER_LENGTH: sent}), ENDPOINT, None
        )

    if _decoded_or_refused(decode) is not None:
        _decode_http(content, int(sent))


@FUZZ
@given(data=st.data(), names=TENSOR_NAMES)
def test_binary_tensors_round_trip_exactly(data: st.DataObject, names: list[str]) -> None:
    expected: dict[str, tuple[Datatype, np.ndarray, bool]] = {}
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in names:
        datatype = data.draw(st.sampled_from(list(DATATYPES.values())))
        binary = data.draw(st.integers(0, 3)) > 0
        array = data.draw(_arrays(datatype, finite=not binary, utf8=not binary))
        expected[name] = (datatype, array, binary)
        item: dict[str, Any] = {"name": name, "datatype": datatype.name, "shape": array.shape}
        if binary:
            blob = _raw_of(array, datatype)
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = _json_data_of(array, datatype, nested=True)
        items.append(item)
    header = orjson.dumps({"inputs": items}, option=orjson.OPT_SERIALIZE_NUMPY)
    body = header + b"".join(blobs)
    decoded = http_codec.decode_request(body, len(header), ENDPOINT, None)
    assert list(decoded.request.inputs) == names
    for name, (datatype, array, binary) in expected.items():
        _assert_same(decoded.request.inputs[name], array, datatype, bitwise=binary)


# --- 3. the gRPC request converter -----------------------------------------------------------


@FUZZ
@given(
    wire=st.binary(max_size=200)
    | _mutated(_infer_requests().map(lambda message: message.SerializeToString()))
)
def test_grpc_decoder_returns_a_request_or_invalid_input_for_any_bytes(wire: bytes) -> None:
    try:
        message = pb.ModelInferRequest.FromString(wire)
    except DecodeError:
        return  # gRPC refuses to deserialize it; Turnout's converter never sees it
    _decode_grpc(message)


@FUZZ
@given(
    message=_infer_requests(),
    remaining_s=st.none() | st.floats(0, 1e9),
    key=st.none() | st.text(max_size=4),
)
def test_grpc_decoder_returns_a_request_or_invalid_input_for_junk_messages(
    message: pb.ModelInferRequest, remaining_s: float | None, key: str | None
) -> None:
    _decode_grpc(message, remaining_s, key)


@FUZZ
@given(data=st.data(), names=TENSOR_NAMES, raw=st.booleans())
def test_grpc_tensors_round_trip_exactly(data: st.DataObject, names: list[str], raw: bool) -> None:
    served = [d for d in DATATYPES.values() if raw or d.name in grpc_codec.CONTENTS_FIELD]
    message = pb.ModelInferRequest(model_name=ENDPOINT)
    expected: dict[str, tuple[Datatype, np.ndarray]] = {}
    for name in names:
        datatype = data.draw(st.sampled_from(served))
        array = data.draw(_arrays(datatype, finite=False, utf8=False))
        expected[name] = (datatype, array)
        tensor = message.inputs.add(name=name, datatype=datatype.name, shape=array.shape)
        if raw:
            message.raw_input_contents.append(_raw_of(array, datatype))
        else:
            field = grpc_codec.CONTENTS_FIELD[datatype.name]
            getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    wire = pb.ModelInferRequest.FromString(message.SerializeToString())
    request = grpc_codec.decode_request(wire, None, None)
    assert list(request.inputs) == names
    for name, (datatype, array) in expected.items():
        _assert_same(request.inputs[name], array, datatype, bitwise=raw)


# --- decoded requests against a model's signature --------------------------------------------

SIGNATURES = st.sampled_from(
    [
        ModelSignature(
            name="batched",
            version="1",
            platform="onnxruntime_onnx",
            inputs=(
                TensorSpec("x", DATATYPES["FP32"], (-1, 2)),
                TensorSpec("y", DATATYPES["INT64"], (-1,)),
            ),
            outputs=(TensorSpec("out", DATATYPES["FP32"], (-1, 2)),),
            max_batch_size=4,
        ),
        ModelSignature(
            name="fixed",
            version="1",
            platform="onnxruntime_onnx",
            inputs=(TensorSpec("x", DATATYPES["BYTES"], ()),),
            outputs=(TensorSpec("out", DATATYPES["BYTES"], (-1,)),),
            max_batch_size=0,
        ),
    ]
)


@FUZZ
@given(
    signature=SIGNATURES,
    request=_v2_documents().map(lambda document: ("http", _json_text(document)))
    | _infer_requests().map(lambda message: ("grpc", message)),
)
def test_decoded_requests_are_validated_or_refused_with_invalid_input(
    signature: ModelSignature, request: tuple[str, Any]
) -> None:
    transport, payload = request
    if transport == "http":
        decoded = _decode_http(payload, None)
        inference = decoded.request if decoded is not None else None
    else:
        inference = _decode_grpc(payload)
    if inference is None:
        return
    model_request = ModelRequest(inference.inputs, inference.requested_outputs)
    _decoded_or_refused(lambda: validate_request(signature, model_request))
