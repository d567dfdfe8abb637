"""The protocol's raw tensor format, shared by the HTTP binary extension and gRPC raw contents:
little-endian, row-major elements; BYTES elements each prefixed by a 4-byte little-endian length.
Also the checks every decoder applies to a declared datatype and shape."""

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from turnout.errors import InvalidInput, quoted
from turnout.models.datatypes import DATATYPES, Datatype, datatype_of_array

MAX_RANK = 32
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one decoded request may hold, checked before anything is allocated for it."""

    max_tensors: int = 256
    # Bounds the element count of a shape even where a zero dimension makes the product 0, so
    # numpy is never asked for an array it cannot describe.
    max_tensor_elements: int = 1 << 28
    max_string_bytes: int = 1 << 20


DEFAULT_LIMITS = RequestLimits()


def check_tensor_count(count: int, what: str, limits: RequestLimits) -> None:
    """InvalidInput when a request names more ``what`` (inputs, outputs) than allowed."""
    if count > limits.max_tensors:
        raise InvalidInput(f"the request has {count} {what}; at most {limits.max_tensors} allowed")


def check_string_length(length: int, index: int, where: str, limits: RequestLimits) -> None:
    """InvalidInput when one BYTES element is longer than allowed."""
    if length > limits.max_string_bytes:
        raise InvalidInput(
            f"{where}: BYTES element {index} has {length} bytes; "
            f"at most {limits.max_string_bytes} allowed"
        )


def parse_datatype(name: Any, where: str) -> Datatype:
    """The datatype a request names; InvalidInput for anything else."""
    datatype = DATATYPES.get(name) if isinstance(name, str) else None
    if datatype is None:
        shown = quoted(name) if isinstance(name, str) else type(name).__name__
        raise InvalidInput(
            f"{where}: unknown datatype {shown}; expected one of {', '.join(DATATYPES)}"
        )
    return datatype


def parse_shape(shape: Any, where: str, limits: RequestLimits = DEFAULT_LIMITS) -> tuple[int, ...]:
    """A declared shape: a list of at most MAX_RANK non-negative integers, of at most
    ``limits.max_tensor_elements`` elements (zero dimensions counted as one)."""
    valid = (
        isinstance(shape, Sequence)
        and not isinstance(shape, str | bytes)
        and len(shape) <= MAX_RANK
        and all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape)
    )
    if not valid:
        raise InvalidInput(
            f"{where}: shape must be a list of at most {MAX_RANK} non-negative integers"
        )
    if math.prod(max(dim, 1) for dim in shape) > limits.max_tensor_elements:
        raise InvalidInput(
            f"{where}: shape {list(shape)} has more than the "
            f"{limits.max_tensor_elements} elements a tensor may have"
        )
    return tuple(shape)


def element_count(shape: tuple[int, ...]) -> int:
    """How many elements a tensor of ``shape`` holds."""
    return math.prod(shape)


def decode_raw(
    buffer: bytes | memoryview,
    datatype: Datatype,
    shape: tuple[int, ...],
    where: str,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """A tensor from raw bytes; InvalidInput when the size does not match the shape."""
    count = element_count(shape)
    if datatype.is_bytes:
        return _decode_bytes(buffer, count, shape, where, limits)
    expected = count * datatype.dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"{where}: shape {list(shape)} of {datatype.name} needs {expected} bytes, "
            f"got {len(buffer)}"
        )
    if datatype.name == "BOOL":
        # Any non-zero byte is true; normalising keeps numpy's bools 0 or 1.
        return np.frombuffer(buffer, np.uint8).astype(bool).reshape(shape)
    array = np.frombuffer(buffer, datatype.dtype).reshape(shape)
    if not array.flags.aligned:
        array = array.copy()
    return array


def _decode_bytes(
    buffer: bytes | memoryview,
    count: int,
    shape: tuple[int, ...],
    where: str,
    limits: RequestLimits,
) -> np.ndarray:
    view = memoryview(buffer)
    if count > len(view) // _LENGTH.size:
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {count} BYTES elements, "
            f"but {len(view)} bytes cannot hold that many"
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(view):
            raise InvalidInput(f"{where}: expected {count} BYTES elements, got {index}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise InvalidInput(
                f"{where}: BYTES element {index} claims {length} bytes; "
                f"only {len(view) - offset} remain"
            )
        check_string_length(length, index, where, limits)
        elements[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(
            f"{where}: {len(view) - offset} bytes left over after {count} BYTES elements"
        )
    return elements.reshape(shape)


def encode_raw(array: np.ndarray, datatype: Datatype) -> bytes:
    """The raw bytes of a tensor."""
    if datatype.is_bytes:
        return b"".join(_length_prefixed(array.reshape(-1)))
    return np.ascontiguousarray(array, dtype=datatype.dtype).tobytes()


def _length_prefixed(elements: Iterable[Any]) -> Iterable[bytes]:
    for element in elements:
        data = as_bytes(element)
        yield _LENGTH.pack(len(data))
        yield data


def as_bytes(element: Any) -> bytes:
    """A BYTES element as bytes: text (what ONNX Runtime gives) is UTF-8 encoded."""
    if isinstance(element, bytes):
        return element
    return str(element).encode()


def output_datatype(name: str, array: np.ndarray) -> Datatype:
    """The protocol datatype of an output the model produced."""
    datatype = datatype_of_array(array)
    if datatype is None:
        raise RuntimeError(f"output {name!r} has dtype {array.dtype}, which is not served")
    return datatype


def narrow_integers(values: np.ndarray, datatype: Datatype, where: str) -> np.ndarray:
    """Integers cast to an integer ``datatype``; InvalidInput when one does not fit."""
    info = np.iinfo(cast("np.dtype[np.integer[Any]]", datatype.dtype))
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise InvalidInput(f"{where}: a value is outside the range of {datatype.name}")
    return values.astype(datatype.dtype)
