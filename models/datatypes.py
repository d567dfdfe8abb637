"""The tensor datatypes Turnout serves: V2 protocol names, numpy dtypes and ONNX Runtime types."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Datatype:
    """One tensor element type as the protocol, numpy, ONNX Runtime and Triton's config name it."""

    name: str
    dtype: np.dtype[np.generic]
    ort_type: str
    config_name: str

    @property
    def is_bytes(self) -> bool:
        """Whether elements are variable-length byte strings (numpy object arrays)."""
        return self.name == "BYTES"


def _datatype(name: str, dtype: str, ort_type: str, config_name: str) -> Datatype:
    return Datatype(name, np.dtype(dtype), f"tensor({ort_type})", f"TYPE_{config_name}")


# Numeric dtypes are little-endian because the protocol's raw tensor bytes are.
DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        _datatype("BOOL", "?", "bool", "BOOL"),
        _datatype("UINT8", "<u1", "uint8", "UINT8"),
        _datatype("UINT16", "<u2", "uint16", "UINT16"),
        _datatype("UINT32", "<u4", "uint32", "UINT32"),
        _datatype("UINT64", "<u8", "uint64", "UINT64"),
        _datatype("INT8", "<i1", "int8", "INT8"),
        _datatype("INT16", "<i2", "int16", "INT16"),
        _datatype("INT32", "<i4", "int32", "INT32"),
        _datatype("INT64", "<i8", "int64", "INT64"),
        _datatype("FP16", "<f2", "float16", "FP16"),
        _datatype("FP32", "<f4", "float", "FP32"),
        _datatype("FP64", "<f8", "double", "FP64"),
        _datatype("BYTES", "O", "string", "STRING"),
    )
}
_BY_ORT_TYPE = {d.ort_type: d for d in DATATYPES.values()}
_BY_DTYPE = {d.dtype: d for d in DATATYPES.values()}


def datatype_of_ort_type(ort_type: str) -> Datatype | None:
    """The datatype for an ONNX Runtime type string such as ``tensor(float)``, if served."""
    return _BY_ORT_TYPE.get(ort_type)


def datatype_of_array(array: np.ndarray) -> Datatype | None:
    """The datatype of a numpy array, if it is one Turnout serves."""
    dtype = array.dtype
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
    return _BY_DTYPE.get(dtype)
