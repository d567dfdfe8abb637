"""The rows a load test sends: from an .npz keyed by input name, the demo's reference set (for the
demo model, whose inputs it fits), or random rows shaped by the server's metadata; and the same
rows with drift injected."""

from pathlib import Path

import numpy as np

from turnout.loadtests.clients import DATATYPES, InputSpec, UsageError
from turnout.loadtests.scenario import DriftConfig
from turnout.server.demo import FEATURES, REFERENCE_SEED, reference_inputs

RANDOM_ROWS = 1000
MAX_REQUESTS = 2000  # distinct requests prepared per input set; they are sent in turn
CATEGORIES = 10  # random integer inputs take values 0 … CATEGORIES-1

Rows = dict[str, np.ndarray]  # input name → values, one row per first-axis entry


def load_rows(specs: list[InputSpec], data: Path | None) -> Rows:
    """The data set for an endpoint with inputs ``specs``."""
    if any(spec.datatype not in DATATYPES for spec in specs):
        raise UsageError("inputs of datatype BYTES need a data set the load test can send")
    if data is not None:
        return _from_file(specs, data)
    if len(specs) == 1 and specs[0].datatype == "FP32" and specs[0].shape == (-1, FEATURES):
        return {specs[0].name: reference_inputs(seed=REFERENCE_SEED)}
    rng = np.random.default_rng(0)
    rows: Rows = {}
    for spec in specs:
        shape = (RANDOM_ROWS, *(1 if size < 0 else size for size in _row_shape(spec)))
        dtype = np.dtype(DATATYPES[spec.datatype])
        if dtype.kind == "f":
            rows[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            rows[spec.name] = rng.random(shape) < 0.5
        else:
            rows[spec.name] = rng.integers(0, CATEGORIES, shape).astype(dtype)
    return rows


def _row_shape(spec: InputSpec) -> tuple[int, ...]:
    """The shape of one row: without the batch dimension when the model has one."""
    return spec.shape[1:] if spec.shape and spec.shape[0] == -1 else spec.shape


def _from_file(specs: list[InputSpec], path: Path) -> Rows:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:  # a damaged archive fails in many ways; all mean the same here
        raise UsageError(f"{path}: not a readable .npz ({error})") from None
    rows: Rows = {}
    for spec in specs:
        if spec.name not in arrays:
            raise UsageError(f"{path}: no array for input {spec.name}")
        array = arrays[spec.name]
        expected = _row_shape(spec)
        if array.ndim != len(expected) + 1 or any(
            size not in (-1, actual) for size, actual in zip(expected, array.shape[1:], strict=True)
        ):
            raise UsageError(
                f"{path}: {spec.name} has rows of shape {list(array.shape[1:])}, "
                f"the model takes {list(expected)}"
            )
        rows[spec.name] = array.astype(DATATYPES[spec.datatype], copy=False)
    if len({len(array) for array in rows.values()}) != 1:
        raise UsageError(f"{path}: the inputs must have the same number of rows")
    return rows


def with_drift(rows: Rows, drift: DriftConfig) -> Rows:
    """The rows changed as ``drift`` says. The features are those drift monitoring sees: the
    columns of ``[rows, F]`` inputs, the channels (second axis) of higher-rank ones."""
    changed: Rows = {}
    for name, array in rows.items():
        values = array.copy()
        if drift.kind == "category_swap":
            if values.dtype.kind in "iu":
                first, second = drift.swap or (0, 1)
                values[array == first] = second
                values[array == second] = first
        elif values.dtype.kind == "f":
            # [rows, feature, rest]: a view of the copy, so changing it changes ``values``.
            grouped = values.reshape(len(values), values.shape[1] if values.ndim > 1 else 1, -1)
            width = grouped.shape[1]
            chosen = [f for f in (drift.features or range(width)) if f < width]
            part = grouped[:, chosen, :]
            mean = part.mean(axis=(0, 2), keepdims=True)
            spread = part.std(axis=(0, 2), keepdims=True)
            if drift.kind == "mean_shift":
                grouped[:, chosen, :] = part + drift.amount * spread
            else:
                grouped[:, chosen, :] = mean + (part - mean) * drift.amount
        changed[name] = values
    return changed


def requests(rows: Rows, rows_per_request: int, batched: bool) -> list[Rows]:
    """The rows cut into requests (at most MAX_REQUESTS), each with its batch dimension when
    the model has one."""
    total = len(next(iter(rows.values())))
    found = []
    step = rows_per_request if batched else 1
    for start in range(0, max(total - step + 1, 1), step):
        if batched:
            found.append({name: array[start : start + step] for name, array in rows.items()})
        else:
            found.append({name: array[start] for name, array in rows.items()})
        if len(found) == MAX_REQUESTS:
            break
    return found
