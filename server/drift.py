"""Putting a model version under drift monitoring: its reference features from the configured
file (the outputs' from running the model on the reference inputs), then the monitor."""

import asyncio
import logging

import numpy as np

from turnout.models.runner import ModelRunner
from turnout.models.types import ModelRequest, ModelSignature
from turnout.monitoring.features import Column
from turnout.monitoring.monitor import DriftMonitor
from turnout.monitoring.reference import (
    UnusableReference,
    read_csv,
    read_npz,
    reference_columns,
)
from turnout.server.monitoring_config import ModelMonitoring

log = logging.getLogger(__name__)

UNBATCHED_REFERENCE_ROWS = 500  # reference rows run one by one through a model without batches


async def watch_version(
    monitor: DriftMonitor, runner: ModelRunner, monitoring: ModelMonitoring
) -> None:
    """Start monitoring the runner's version; a reference that cannot be used is logged and
    the version's reference is captured from live traffic instead."""
    signature = runner.signature
    reference: dict[str, Column] = {}
    path = monitoring.reference
    try:
        # Reading, and below profiling, happen off the event loop: a version may be loaded
        # while the server is busy.
        if path is not None and path.suffix == ".csv":
            table = await asyncio.to_thread(read_csv, path)
            reference = await asyncio.to_thread(_as_served, table, signature)
        elif path is not None:
            names = [spec.name for spec in signature.inputs]
            inputs = await asyncio.to_thread(read_npz, path, names)
            reference = await asyncio.to_thread(reference_columns, inputs)
            reference |= await _output_columns(runner, inputs)
    except UnusableReference as error:
        log.error(
            "drift reference of %r version %s not used (%s); capturing one from traffic",
            signature.name,
            signature.version,
            error,
        )
        reference = {}
    await asyncio.to_thread(
        monitor.watch,
        signature.name,
        signature.version,
        monitoring.settings(),
        signature.max_batch_size > 0,
        reference,
    )


async def _output_columns(runner: ModelRunner, inputs: dict[str, np.ndarray]) -> dict[str, Column]:
    """The model's outputs on the reference inputs, as features."""
    rows = len(next(iter(inputs.values())))
    step = runner.signature.max_batch_size
    parts: list[dict[str, np.ndarray]] = []
    try:
        if step > 0:
            for start in range(0, rows, step):
                chunk = {name: array[start : start + step] for name, array in inputs.items()}
                parts.append((await runner.infer(ModelRequest(chunk))).outputs)
        else:
            for row in range(min(rows, UNBATCHED_REFERENCE_ROWS)):
                single = {name: array[row] for name, array in inputs.items()}
                outputs = (await runner.infer(ModelRequest(single))).outputs
                parts.append({name: value[np.newaxis, ...] for name, value in outputs.items()})
    except Exception as error:
        raise UnusableReference(f"the model did not run on it ({error})") from None
    merged = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    return reference_columns(merged)


def _as_served(reference: dict[str, Column], signature: ModelSignature) -> dict[str, Column]:
    """CSV columns as the tensors they describe are served: those of integer and boolean
    tensors as categories, spelled as live values are (``3``, ``True``); those of
    floating-point tensors as numbers, an empty cell as NaN (UnusableReference for text)."""
    kinds = {spec.name: spec.datatype for spec in (*signature.inputs, *signature.outputs)}
    typed = dict(reference)
    for name, column in reference.items():
        datatype = kinds.get(name.split("[", 1)[0])
        if datatype is not None and datatype.dtype.kind == "f" and not column.numeric:
            typed[name] = Column(_numbers(name, column.values), numeric=True)
            continue
        if datatype is None or datatype.dtype.kind == "f" or not column.numeric:
            continue
        if datatype.name == "BOOL":
            texts = [str(bool(value)) for value in column.values]
        else:
            texts = [
                str(int(value)) if value.is_integer() else str(value) for value in column.values
            ]
        typed[name] = Column(np.array(texts, dtype=object), numeric=False)
    return typed


def _numbers(name: str, texts: np.ndarray) -> np.ndarray:
    try:
        return np.array([float(text) if text.strip() else np.nan for text in texts])
    except ValueError:
        raise UnusableReference(f"column {name} holds text, but {name} is numeric") from None
