"""Tensor data as V2 JSON: row-major ``data`` lists, flat or nested, checked strictly against the
declared datatype and shape (a JSON true is not an integer, 1e39 is not an FP32)."""

from typing import Any

import numpy as np

from turnout.errors import InvalidInput
from turnout.models.datatypes import Datatype
from turnout.server.tensors import (
    DEFAULT_LIMITS,
    MAX_RANK,
    RequestLimits,
    as_bytes,
    check_string_length,
    element_count,
    narrow_integers,
)

_ALLOWED_TYPES: dict[str, set[type]] = {
    "b": {bool},
    "i": {int},
    "u": {int},
    "f": {int, float},
    "O": {str},
}
# The magnitude from which a value rounds to infinity: halfway between the largest finite value
# and the next power of two.
_ROUNDS_TO_INFINITY = {
    name: float(info.max) + 2.0 ** (info.maxexp - info.nmant - 2)
    for name, info in (("FP16", np.finfo(np.float16)), ("FP32", np.finfo(np.float32)))
}
_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "O": "strings"}


def decode_json_data(
    data: Any,
    datatype: Datatype,
    shape: tuple[int, ...],
    where: str,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """The tensor a ``data`` field holds; InvalidInput when it does not fit."""
    flat = data if isinstance(data, list) else [data]
    kinds = set(map(type, flat))
    if list in kinds:
        flat = _flatten(flat, where)
        kinds = set(map(type, flat))
    count = element_count(shape)
    if len(flat) != count:
        raise InvalidInput(
            f"{where}: shape {list(shape)} needs {count} elements, data has {len(flat)}"
        )
    kind = datatype.dtype.kind
    if not kinds <= _ALLOWED_TYPES[kind]:
        raise InvalidInput(f"{where}: {datatype.name} data must be {_KIND_NAMES[kind]}")
    if datatype.is_bytes:
        encoded = [text.encode() for text in flat]
        for index, element in enumerate(encoded):
            check_string_length(len(element), index, where, limits)
        elements = np.empty(count, dtype=object)
        elements[:] = encoded
        return elements.reshape(shape)
    return _numbers(flat, datatype, where).reshape(shape)


def _numbers(flat: list[Any], datatype: Datatype, where: str) -> np.ndarray:
    target = datatype.dtype
    if target.kind == "b":
        return np.array(flat, dtype=bool)
    try:
        if target.kind == "f":
            limit = _ROUNDS_TO_INFINITY.get(datatype.name)
            if limit is not None and flat and max(map(abs, flat)) >= limit:
                raise OverflowError
            return np.array(flat, dtype=target)
        try:
            values = np.array(flat, dtype=np.int64)
        except OverflowError:
            values = np.array(flat, dtype=np.uint64)
    except OverflowError:
        raise InvalidInput(f"{where}: a value is outside the range of {datatype.name}") from None
    return narrow_integers(values, datatype, where)


def _flatten(data: list[Any], where: str) -> list[Any]:
    """The elements of rectangular nested lists, row-major; InvalidInput when ragged."""
    dims: list[int] = []
    probe: Any = data
    while isinstance(probe, list):
        dims.append(len(probe))
        if len(dims) > MAX_RANK:
            raise InvalidInput(f"{where}: data is nested too deeply (at most {MAX_RANK} levels)")
        if not probe:
            break
        probe = probe[0]
    flat: list[Any] = []

    def walk(node: list[Any], depth: int) -> None:
        if len(node) != dims[depth]:
            raise InvalidInput(f"{where}: data is ragged; nested lists must be rectangular")
        leaf = depth == len(dims) - 1
        for child in node:
            if isinstance(child, list) == leaf:
                raise InvalidInput(f"{where}: data is ragged; nested lists must be rectangular")
        if leaf:
            flat.extend(node)
        else:
            for child in node:
                walk(child, depth + 1)

    walk(data, 0)
    return flat


def encode_json_data(array: np.ndarray, datatype: Datatype) -> Any:
    """A tensor as a flat ``data`` list: numbers (orjson serialises the array directly), or
    strings for BYTES (invalid UTF-8 replaced; ask for binary data to get bytes exactly)."""
    if datatype.is_bytes:
        return [as_bytes(element).decode(errors="replace") for element in array.reshape(-1)]
    return np.ascontiguousarray(array, dtype=datatype.dtype).reshape(-1)
