"""The raw tensor format shared by the HTTP binary extension and gRPC raw contents, and the checks
every decoder applies to a declared datatype and shape (server/tensors.py)."""

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from turnout.errors import InvalidInput
from turnout.models.datatypes import DATATYPES, Datatype
from turnout.server.tensors import (
    MAX_RANK,
    RequestLimits,
    as_bytes,
    check_tensor_count,
    decode_raw,
    element_count,
    encode_raw,
    narrow_integers,
    output_datatype,
    parse_datatype,
    parse_shape,
)

WHERE = "input 'x'"
# Bounded and derandomized: the same examples every run, a few seconds in all.
PROPERTY = settings(max_examples=200, deadline=None, database=None, derandomize=True)
ALL_NAMES = ", ".join(DATATYPES)


def _length_prefixed(*elements: bytes) -> bytes:
    """BYTES elements in the wire format, built independently of the code under test."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


# (datatype, struct format of one element, four values that reach the type's edges).
NUMERIC_CASES = [
    pytest.param("BOOL", "?", [True, False, False, True], id="BOOL"),
    pytest.param("UINT8", "B", [0, 1, 128, 255], id="UINT8"),
    pytest.param("UINT16", "H", [0, 1, 256, 65535], id="UINT16"),
    pytest.param("UINT32", "I", [0, 1, 65536, 2**32 - 1], id="UINT32"),
    pytest.param("UINT64", "Q", [0, 1, 2**32, 2**64 - 1], id="UINT64"),
    pytest.param("INT8", "b", [-128, -1, 0, 127], id="INT8"),
    pytest.param("INT16", "h", [-32768, -1, 256, 32767], id="INT16"),
    pytest.param("INT32", "i", [-(2**31), -1, 65536, 2**31 - 1], id="INT32"),
    pytest.param("INT64", "q", [-(2**63), -1, 2**32, 2**63 - 1], id="INT64"),
    pytest.param("FP16", "e", [-65504.0, 0.5, 6e-08, float("inf")], id="FP16"),
    pytest.param("FP32", "f", [-3.4028234663852886e38, 0.1, 1e-45, float("nan")], id="FP32"),
    pytest.param("FP64", "d", [-1.7976931348623157e308, 0.1, 5e-324, float("-inf")], id="FP64"),
]


# --- parse_datatype --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATATYPES))
def test_parse_datatype_accepts_every_served_name(name: str) -> None:
    assert parse_datatype(name, WHERE) is DATATYPES[name]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        pytest.param("FLOAT32", "'FLOAT32'", id="unknown-name"),
        pytest.param("fp32", "'fp32'", id="lower-case"),
        pytest.param("BF16", "'BF16'", id="bf16-not-served"),
        pytest.param("", "''", id="empty"),
        pytest.param(32, "int", id="number"),
        pytest.param(None, "NoneType", id="missing"),
        pytest.param(["FP32"], "list", id="list"),
    ],
)
def test_parse_datatype_refuses_others_naming_what_came_and_what_is_served(
    name: Any, shown: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_datatype(name, WHERE)
    assert caught.value.message == (
        f"{WHERE}: unknown datatype {shown}; expected one of {ALL_NAMES}"
    )


def test_parse_datatype_shortens_a_huge_name() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_datatype("X" * 10_000, WHERE)
    assert "'" + "X" * 64 + "…'" in caught.value.message
    assert len(caught.value.message) < 400


# --- parse_shape -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        pytest.param([], (), id="scalar"),
        pytest.param([0], (0,), id="empty"),
        pytest.param([2, 3], (2, 3), id="matrix"),
        pytest.param((4, 1, 5), (4, 1, 5), id="tuple"),
        pytest.param([1] * MAX_RANK, (1,) * MAX_RANK, id="max-rank"),
    ],
)
def test_parse_shape_accepts_lists_of_non_negative_integers(
    shape: Any, expected: tuple[int, ...]
) -> None:
    parsed = parse_shape(shape, WHERE)
    assert parsed == expected
    assert type(parsed) is tuple


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(None, id="missing"),
        pytest.param(3, id="number"),
        pytest.param("23", id="string"),
        pytest.param(b"\x02\x03", id="bytes"),
        pytest.param({"0": 2}, id="object"),
        pytest.param([-1], id="negative"),
        pytest.param([2, 1.5], id="float"),
        pytest.param([2.0], id="integral-float"),
        pytest.param([True, 2], id="boolean"),
        pytest.param(["2"], id="string-dim"),
        pytest.param([[2]], id="nested"),
        pytest.param([None], id="null-dim"),
        pytest.param([1] * (MAX_RANK + 1), id="rank-over-max"),
    ],
)
def test_parse_shape_refuses_everything_else(shape: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_shape(shape, WHERE)
    assert caught.value.message == (
        f"{WHERE}: shape must be a list of at most {MAX_RANK} non-negative integers"
    )


@pytest.mark.parametrize(
    ("shape", "count"),
    [
        pytest.param((), 1, id="scalar"),
        pytest.param((0,), 0, id="empty"),
        pytest.param((0, 7), 0, id="empty-rows"),
        pytest.param((2, 3, 4), 24, id="rank-3"),
    ],
)
def test_element_count(shape: tuple[int, ...], count: int) -> None:
    assert element_count(shape) == count


# --- decode_raw / encode_raw: numeric datatypes ----------------------------------------------


@pytest.mark.parametrize(("name", "fmt", "values"), NUMERIC_CASES)
def test_numeric_raw_is_little_endian_row_major(name: str, fmt: str, values: list[Any]) -> None:
    datatype = DATATYPES[name]
    wire = struct.pack(f"<{len(values)}{fmt}", *values)
    expected = np.array(values, dtype=datatype.dtype).reshape(2, 2)

    decoded = decode_raw(wire, datatype, (2, 2), WHERE)

    assert decoded.dtype == datatype.dtype
    assert decoded.shape == (2, 2)
    np.testing.assert_array_equal(decoded, expected)
    assert encode_raw(expected, datatype) == wire
    assert encode_raw(decoded, datatype) == wire


@pytest.mark.parametrize(("name", "fmt", "values"), NUMERIC_CASES)
def test_numeric_raw_decodes_from_an_unaligned_memoryview(
    name: str, fmt: str, values: list[Any]
) -> None:
    """The HTTP binary extension hands decode_raw slices of the body at any offset."""
    datatype = DATATYPES[name]
    wire = struct.pack(f"<{len(values)}{fmt}", *values)
    view = memoryview(b"\x00" + wire + b"\x00")[1:-1]

    decoded = decode_raw(view, datatype, (4,), WHERE)

    assert decoded.flags.aligned
    np.testing.assert_array_equal(decoded, np.array(values, dtype=datatype.dtype))


@pytest.mark.parametrize(("name", "fmt", "values"), NUMERIC_CASES)
def test_encode_raw_writes_big_endian_arrays_little_endian(
    name: str, fmt: str, values: list[Any]
) -> None:
    datatype = DATATYPES[name]
    big_endian = np.array(values, dtype=datatype.dtype.newbyteorder(">"))
    assert encode_raw(big_endian, datatype) == struct.pack(f"<{len(values)}{fmt}", *values)


def test_encode_raw_writes_non_contiguous_arrays_row_major() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T  # [[0, 3], [1, 4], [2, 5]]
    assert encode_raw(array, DATATYPES["INT32"]) == struct.pack("<6i", 0, 3, 1, 4, 2, 5)


def test_raw_scalar_tensor() -> None:
    decoded = decode_raw(struct.pack("<f", 2.5), DATATYPES["FP32"], (), WHERE)
    assert decoded.shape == ()
    assert decoded.item() == 2.5


@pytest.mark.parametrize("name", [name for name in DATATYPES if name != "BYTES"])
def test_raw_empty_tensor(name: str) -> None:
    datatype = DATATYPES[name]
    decoded = decode_raw(b"", datatype, (0, 3), WHERE)
    assert decoded.shape == (0, 3)
    assert decoded.dtype == datatype.dtype
    assert encode_raw(decoded, datatype) == b""


def test_bool_raw_treats_every_non_zero_byte_as_true() -> None:
    decoded = decode_raw(bytes([0, 1, 2, 255]), DATATYPES["BOOL"], (4,), WHERE)

    assert decoded.dtype == np.bool_
    assert decoded.tolist() == [False, True, True, True]
    # Normalised: numpy's bools hold 0 or 1, so re-encoding gives canonical bytes.
    assert decoded.view(np.uint8).tolist() == [0, 1, 1, 1]
    assert encode_raw(decoded, DATATYPES["BOOL"]) == bytes([0, 1, 1, 1])


@pytest.mark.parametrize(
    ("name", "shape", "size", "needed"),
    [
        pytest.param("FP32", (2,), 7, 8, id="fp32-short"),
        pytest.param("FP32", (2,), 9, 8, id="fp32-long"),
        pytest.param("FP32", (2, 3), 8, 24, id="fp32-matrix"),
        pytest.param("INT64", (1,), 4, 8, id="int64-short"),
        pytest.param("FP16", (3,), 4, 6, id="fp16-short"),
        pytest.param("BOOL", (2, 2), 5, 4, id="bool-long"),
        pytest.param("UINT8", (0,), 1, 0, id="empty-with-bytes"),
        pytest.param("INT32", (), 0, 4, id="scalar-without-bytes"),
    ],
)
def test_raw_size_must_match_the_shape(
    name: str, shape: tuple[int, ...], size: int, needed: int
) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_raw(b"\x01" * size, DATATYPES[name], shape, WHERE)
    assert caught.value.message == (
        f"{WHERE}: shape {list(shape)} of {name} needs {needed} bytes, got {size}"
    )


# --- decode_raw / encode_raw: BYTES ----------------------------------------------------------


@pytest.mark.parametrize(
    ("elements", "shape"),
    [
        pytest.param([b"abc"], (1,), id="one"),
        pytest.param([b"", b"a", "ü".encode(), b"\x00\xff"], (2, 2), id="matrix"),
        pytest.param([b""], (), id="scalar-empty-string"),
        pytest.param([b"x" * 70_000], (1,), id="long-element"),
        pytest.param([], (0,), id="no-elements"),
        pytest.param([], (3, 0), id="no-elements-rank-2"),
    ],
)
def test_bytes_raw_is_length_prefixed(elements: list[bytes], shape: tuple[int, ...]) -> None:
    datatype = DATATYPES["BYTES"]
    wire = _length_prefixed(*elements)

    decoded = decode_raw(wire, datatype, shape, WHERE)

    assert decoded.dtype == np.object_
    assert decoded.shape == shape
    assert decoded.reshape(-1).tolist() == elements
    assert all(type(element) is bytes for element in decoded.reshape(-1))
    assert encode_raw(decoded, datatype) == wire


def test_bytes_raw_decodes_from_a_memoryview() -> None:
    wire = _length_prefixed(b"ab", b"cde")
    decoded = decode_raw(memoryview(b"##" + wire)[2:], DATATYPES["BYTES"], (2,), WHERE)
    assert decoded.tolist() == [b"ab", b"cde"]


def test_encode_raw_utf8_encodes_text_elements() -> None:
    """ONNX Runtime gives string outputs as str; they go out UTF-8 encoded."""
    array = np.array(["héllo", b"raw\xff", ""], dtype=object)
    assert encode_raw(array, DATATYPES["BYTES"]) == _length_prefixed(
        "héllo".encode(), b"raw\xff", b""
    )


@pytest.mark.parametrize(
    ("wire", "shape", "message"),
    [
        pytest.param(
            b"\x00" * 8,
            (3,),
            "shape [3] needs 3 BYTES elements, but 8 bytes cannot hold that many",
            id="too-few-bytes-for-the-prefixes",
        ),
        pytest.param(
            b"",
            (1,),
            "shape [1] needs 1 BYTES elements, but 0 bytes cannot hold that many",
            id="empty-buffer",
        ),
        pytest.param(
            _length_prefixed(b"abc") + b"\x00",
            (2,),
            "expected 2 BYTES elements, got 1",
            id="prefix-of-second-element-missing",
        ),
        pytest.param(
            struct.pack("<I", 10) + b"ab",
            (1,),
            "BYTES element 0 claims 10 bytes; only 2 remain",
            id="truncated-first-element",
        ),
        pytest.param(
            _length_prefixed(b"ok") + struct.pack("<I", 2**32 - 1) + b"abcd",
            (2,),
            f"BYTES element 1 claims {2**32 - 1} bytes; only 4 remain",
            id="truncated-second-element",
        ),
        pytest.param(
            _length_prefixed(b"abc") + b"zz",
            (1,),
            "2 bytes left over after 1 BYTES elements",
            id="overlong",
        ),
        pytest.param(
            _length_prefixed(b"a", b"b"),
            (1,),
            "5 bytes left over after 1 BYTES elements",
            id="one-element-too-many",
        ),
        pytest.param(
            _length_prefixed(b""),
            (0,),
            "4 bytes left over after 0 BYTES elements",
            id="bytes-for-an-empty-tensor",
        ),
    ],
)
def test_bytes_raw_refuses_sizes_that_do_not_add_up(
    wire: bytes, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_raw(wire, DATATYPES["BYTES"], shape, WHERE)
    assert caught.value.message == f"{WHERE}: {message}"


@pytest.mark.parametrize("name", ["INT8", "FP32", "BYTES"])
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param([0, 2**62], id="0x2^62"),
        pytest.param([2**31, 2**31, 0], id="2^31x2^31x0"),
    ],
)
def test_a_zero_element_shape_with_huge_dimensions_is_decoded_or_refused(
    name: str, shape: list[int]
) -> None:
    """A zero-element shape still has to fit numpy. Whichever step checks it, a client's absurd
    shape must end as a tensor or an InvalidInput (400), never a ValueError (500)."""
    outcome = _decode_or_refusal(b"", DATATYPES[name], shape)
    if isinstance(outcome, InvalidInput):
        assert outcome.message.startswith(f"{WHERE}: ")
    else:
        assert outcome.shape == tuple(shape)


def _decode_or_refusal(
    buffer: bytes, datatype: Datatype, shape: list[int]
) -> np.ndarray | InvalidInput:
    """What a decoder makes of a declared shape and raw bytes: a tensor or the refusal."""
    try:
        return decode_raw(buffer, datatype, parse_shape(shape, WHERE), WHERE)
    except InvalidInput as error:
        return error


# --- as_bytes, output_datatype ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        pytest.param(b"\x00\xff", b"\x00\xff", id="bytes"),
        pytest.param("ü", "ü".encode(), id="str"),
        pytest.param(np.str_("ab"), b"ab", id="numpy-str"),
    ],
)
def test_as_bytes(element: Any, expected: bytes) -> None:
    assert as_bytes(element) == expected


@pytest.mark.parametrize("name", list(DATATYPES))
def test_output_datatype_of_every_served_dtype(name: str) -> None:
    datatype = DATATYPES[name]
    assert output_datatype("y", np.zeros(2, dtype=datatype.dtype)) is datatype


@pytest.mark.parametrize("name", ["UINT16", "INT32", "INT64", "FP16", "FP32", "FP64"])
def test_output_datatype_of_big_endian_arrays(name: str) -> None:
    datatype = DATATYPES[name]
    array = np.zeros(2, dtype=datatype.dtype.newbyteorder(">"))
    assert output_datatype("y", array) is datatype


@pytest.mark.parametrize(
    ("dtype", "shown"),
    [
        pytest.param(np.complex64, "complex64", id="complex64"),
        pytest.param("datetime64[s]", "datetime64[s]", id="datetime"),
        pytest.param("<U3", "<U3", id="unicode"),
    ],
)
def test_output_datatype_refuses_dtypes_that_are_not_served(dtype: Any, shown: str) -> None:
    with pytest.raises(RuntimeError) as caught:
        output_datatype("y", np.zeros(1, dtype=dtype))
    assert str(caught.value) == f"output 'y' has dtype {shown}, which is not served"


# --- narrow_integers -------------------------------------------------------------------------

INTEGER_RANGES = [
    pytest.param("UINT8", 0, 255, id="UINT8"),
    pytest.param("UINT16", 0, 65535, id="UINT16"),
    pytest.param("UINT32", 0, 2**32 - 1, id="UINT32"),
    pytest.param("UINT64", 0, 2**64 - 1, id="UINT64"),
    pytest.param("INT8", -128, 127, id="INT8"),
    pytest.param("INT16", -32768, 32767, id="INT16"),
    pytest.param("INT32", -(2**31), 2**31 - 1, id="INT32"),
    pytest.param("INT64", -(2**63), 2**63 - 1, id="INT64"),
]


def _wide(values: list[int]) -> np.ndarray:
    """Integers as a JSON parser or protobuf hands them over: int64, or uint64 when too big."""
    return np.array(values, dtype=np.uint64 if max(values) > 2**63 - 1 else np.int64)


@pytest.mark.parametrize(("name", "low", "high"), INTEGER_RANGES)
def test_narrow_integers_keeps_the_edges_of_the_range(name: str, low: int, high: int) -> None:
    datatype = DATATYPES[name]
    for values in ([low, high], [low], [high]):
        narrowed = narrow_integers(_wide(values), datatype, WHERE)
        assert narrowed.dtype == datatype.dtype
        assert narrowed.tolist() == values


@pytest.mark.parametrize(
    ("name", "values"),
    [
        pytest.param("UINT8", [-1], id="UINT8-below"),
        pytest.param("UINT8", [256], id="UINT8-above"),
        pytest.param("UINT8", [300], id="UINT8-300"),
        pytest.param("UINT16", [-1], id="UINT16-below"),
        pytest.param("UINT16", [65536], id="UINT16-above"),
        pytest.param("UINT32", [-1], id="UINT32-below"),
        pytest.param("UINT32", [2**32], id="UINT32-above"),
        pytest.param("UINT64", [-1], id="UINT64-below"),
        pytest.param("INT8", [-129], id="INT8-below"),
        pytest.param("INT8", [128], id="INT8-above"),
        pytest.param("INT8", [300], id="INT8-300"),
        pytest.param("INT16", [-32769], id="INT16-below"),
        pytest.param("INT16", [32768], id="INT16-above"),
        pytest.param("INT32", [-(2**31) - 1], id="INT32-below"),
        pytest.param("INT32", [2**31], id="INT32-above"),
        pytest.param("INT64", [2**63], id="INT64-above"),
        pytest.param("INT16", [1, 2, 40000, 3], id="one-bad-among-good"),
    ],
)
def test_narrow_integers_refuses_values_outside_the_range(name: str, values: list[int]) -> None:
    with pytest.raises(InvalidInput) as caught:
        narrow_integers(_wide(values), DATATYPES[name], WHERE)
    assert caught.value.message == f"{WHERE}: a value is outside the range of {name}"


def test_narrow_integers_of_nothing() -> None:
    narrowed = narrow_integers(np.array([], dtype=np.int64), DATATYPES["INT8"], WHERE)
    assert narrowed.dtype == np.int8
    assert narrowed.size == 0


# --- properties ------------------------------------------------------------------------------


@PROPERTY
@given(
    buffer=st.binary(max_size=64),
    name=st.sampled_from(list(DATATYPES)),
    shape=st.lists(st.integers(min_value=0, max_value=2**63 - 1), max_size=4)
    | st.lists(st.integers(min_value=0, max_value=6), max_size=3),
)
# A counterexample found before, kept so that the outcome does not depend on what is generated.
@example(buffer=b"", name="FP32", shape=[0, 2**62])
def test_decode_raw_returns_a_tensor_or_refuses_the_input(
    buffer: bytes, name: str, shape: list[int]
) -> None:
    datatype = DATATYPES[name]
    decoded = _decode_or_refusal(buffer, datatype, shape)
    if isinstance(decoded, InvalidInput):
        return
    assert decoded.shape == tuple(shape)
    assert decoded.dtype == datatype.dtype
    if not datatype.is_bytes and name != "BOOL":
        assert encode_raw(decoded, datatype) == buffer


_NUMERIC = [datatype for datatype in DATATYPES.values() if not datatype.is_bytes]


@st.composite
def _typed_arrays(draw: st.DrawFn) -> tuple[Datatype, np.ndarray]:
    datatype = draw(st.sampled_from(_NUMERIC))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    return datatype, draw(hnp.arrays(datatype.dtype, shape))


@PROPERTY
@given(typed=_typed_arrays())
def test_raw_round_trip(typed: tuple[Datatype, np.ndarray]) -> None:
    datatype, array = typed
    decoded = decode_raw(encode_raw(array, datatype), datatype, array.shape, WHERE)
    assert decoded.dtype == datatype.dtype
    # Bitwise, so that NaN payloads and negative zeros count.
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()


@PROPERTY
@given(elements=st.lists(st.binary(max_size=20), max_size=8))
def test_bytes_raw_round_trip(elements: list[bytes]) -> None:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    wire = encode_raw(array, DATATYPES["BYTES"])
    assert wire == _length_prefixed(*elements)
    assert decode_raw(wire, DATATYPES["BYTES"], (len(elements),), WHERE).tolist() == elements


# --- RequestLimits ------------------------------------------------------------------------------

SMALL = RequestLimits(max_tensors=2, max_tensor_elements=12, max_string_bytes=3)


@pytest.mark.parametrize("shape", [[3, 4], [12], [0, 12], [1, 1, 12]])
def test_a_shape_within_the_element_limit_is_accepted(shape: list[int]) -> None:
    assert parse_shape(shape, WHERE, SMALL) == tuple(shape)


@pytest.mark.parametrize("shape", [[13], [3, 5], [0, 13], [2**40, 2**40]])
def test_a_shape_over_the_element_limit_is_refused_naming_the_limit(shape: list[int]) -> None:
    with pytest.raises(InvalidInput, match="more than the 12 elements a tensor may have"):
        parse_shape(shape, WHERE, SMALL)


def test_tensor_counts_up_to_the_limit_pass_and_beyond_it_are_refused() -> None:
    check_tensor_count(2, "inputs", SMALL)
    with pytest.raises(InvalidInput, match="the request has 3 inputs; at most 2 allowed"):
        check_tensor_count(3, "inputs", SMALL)


def test_a_bytes_element_over_the_string_limit_is_refused() -> None:
    raw = _length_prefixed(b"abc", b"abcd")
    with pytest.raises(InvalidInput, match="BYTES element 1 has 4 bytes; at most 3 allowed"):
        decode_raw(raw, DATATYPES["BYTES"], (2,), WHERE, SMALL)


def test_bytes_elements_at_the_string_limit_are_decoded() -> None:
    array = decode_raw(_length_prefixed(b"abc", b""), DATATYPES["BYTES"], (2,), WHERE, SMALL)
    assert array.tolist() == [b"abc", b""]
