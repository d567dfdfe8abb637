"""Features: the one-dimensional columns of tensors that drift is measured on.

- A ``[rows, F]`` tensor gives features ``NAME[0]`` … ``NAME[F-1]`` (column ``i`` of ``NAME``).
- A ``[rows]`` tensor gives the feature ``NAME``.
- A tensor of higher rank, ``[rows, C, …]``, gives one feature per position of its second axis,
  ``NAME[c]``: the mean over the remaining axes (for images in NCHW, a channel's mean).
- Floating-point features are numeric; integer, boolean and BYTES features are categorical
  (BYTES as text, whether they come as Python objects or as fixed-width bytes).

Models without a batch dimension are treated as one row per request.
"""

from dataclasses import dataclass

import numpy as np

MAX_FEATURES_PER_TENSOR = 256


@dataclass(frozen=True, slots=True)
class Column:
    """The values of one feature in a batch of rows."""

    values: np.ndarray
    numeric: bool


def reduced(tensor: np.ndarray) -> np.ndarray:
    """A batched tensor cut down to what its features need: ``[rows]`` or ``[rows, F]`` with
    F at most MAX_FEATURES_PER_TENSOR (``columns`` names the features of the result as it
    would those of the whole tensor)."""
    if tensor.ndim > 2 and tensor.dtype.kind == "f":
        tensor = tensor.reshape(tensor.shape[0], tensor.shape[1], -1).mean(axis=2)
    elif tensor.ndim > 2:
        tensor = tensor.reshape(tensor.shape[0], tensor.shape[1], -1)[:, :, 0]
    if tensor.ndim == 2 and tensor.shape[1] > MAX_FEATURES_PER_TENSOR:
        tensor = tensor[:, :MAX_FEATURES_PER_TENSOR]
    return tensor


def columns(tensors: dict[str, np.ndarray], batched: bool) -> dict[str, Column]:
    """The features of some rows of tensors (the first dimension is rows when ``batched``)."""
    found: dict[str, Column] = {}
    for name, tensor in tensors.items():
        array = reduced(tensor if batched else tensor[np.newaxis, ...])
        numeric = array.dtype.kind == "f"
        if array.ndim == 1:
            found[name] = Column(_flat(array, numeric), numeric)
            continue
        for index in range(array.shape[1]):
            found[f"{name}[{index}]"] = Column(_flat(array[:, index], numeric), numeric)
    return found


def _flat(values: np.ndarray, numeric: bool) -> np.ndarray:
    if numeric:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    if values.dtype.kind in "OS":
        return np.array([_text(value) for value in values.reshape(-1)], dtype=object)
    return np.asarray(values).reshape(-1)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
