"""Putting a model version under drift monitoring: its reference features from the configured
file (the outputs' from running the model on the reference inputs), then the monitor."""

import asyncio
import logging

import numpy as np

from turnout.models.runner import ModelRunner
from turnout.models.types import ModelRequest, ModelSignature
from turnout.monitoring.features import Column, columns
from turnout.monitoring.monitor import DriftMonitor
from turnout.monitoring.reference import UnusableReference, read_csv, read_npz
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
        if path is not None and path.suffix == ".csv":
            reference = _as_served(await asyncio.to_thread(read_csv, path), signature)
        elif path is not None:
            names = [spec.name for spec in signature.inputs]
            inputs = await asyncio.to_thread(read_npz, path, names)
            reference = columns(inputs, batched=True)
            reference |= await _output_columns(runner, inputs)
    except UnusableReference as error:
        log.error(
            "drift reference of %r version %s not used (%s); capturing one from traffic",
            signature.name,
            signature.version,
            error,
        )
        reference = {}
    monitor.watch(
        signature.name,
        signature.version,
        monitoring.settings(),
        batched=signature.max_batch_size > 0,
        reference=reference,
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
    return columns(merged, batched=True)


def _as_served(reference: dict[str, Column], signature: ModelSignature) -> dict[str, Column]:
    """CSV columns of integer and boolean tensors as categories, spelled as live values of
    those tensors are (``3``, ``True``): a CSV says only that they look like numbers."""
    kinds = {spec.name: spec.datatype for spec in (*signature.inputs, *signature.outputs)}
    typed = dict(reference)
    for name, column in reference.items():
        datatype = kinds.get(name.split("[", 1)[0])
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
