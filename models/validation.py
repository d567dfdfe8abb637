"""Checking a request against a model's signature before ONNX Runtime sees it, so that every
mistake gets a message that says what was expected."""

import numpy as np

from turnout.errors import InvalidInput, quoted, quoted_list
from turnout.models.datatypes import datatype_of_array
from turnout.models.types import ModelRequest, ModelSignature, TensorSpec


def validate_request(signature: ModelSignature, request: ModelRequest) -> None:
    """Raise InvalidInput unless the request's inputs and requested outputs fit the model."""
    expected = {spec.name for spec in signature.inputs}
    given = request.inputs.keys()
    unknown = [name for name in given if name not in expected]
    if unknown:
        raise InvalidInput(
            f"unknown input {quoted_list(unknown)}; model {quoted(signature.name)} takes "
            f"{quoted_list(spec.name for spec in signature.inputs)}"
        )
    missing = [spec.name for spec in signature.inputs if spec.name not in given]
    if missing:
        raise InvalidInput(
            f"missing input {quoted_list(missing)} for model {quoted(signature.name)}"
        )
    for spec in signature.inputs:
        _check_tensor(spec, request.inputs[spec.name])
    if signature.max_batch_size > 0:
        _check_batch(signature, request.inputs)
    if request.requested_outputs is not None:
        outputs = {spec.name for spec in signature.outputs}
        unknown = [name for name in request.requested_outputs if name not in outputs]
        if unknown:
            raise InvalidInput(
                f"unknown output {quoted_list(unknown)}; model {quoted(signature.name)} gives "
                f"{quoted_list(spec.name for spec in signature.outputs)}"
            )


def _check_tensor(spec: TensorSpec, array: np.ndarray) -> None:
    datatype = datatype_of_array(array)
    if datatype is not spec.datatype:
        got = datatype.name if datatype is not None else str(array.dtype)
        raise InvalidInput(
            f"input {quoted(spec.name)}: expected datatype {spec.datatype.name}, got {got}"
        )
    shape = array.shape
    fits = len(shape) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        raise InvalidInput(
            f"input {quoted(spec.name)}: expected shape {list(spec.shape)}, got {list(shape)}"
        )


def _check_batch(signature: ModelSignature, inputs: dict[str, np.ndarray]) -> None:
    sizes = {array.shape[0] for array in inputs.values()}
    if len(sizes) > 1:
        raise InvalidInput(
            "inputs disagree on the batch size (first dimension): "
            + ", ".join(f"{quoted(name)} has {array.shape[0]}" for name, array in inputs.items())
        )
    if not sizes:
        return
    (size,) = sizes
    if not 1 <= size <= signature.max_batch_size:
        raise InvalidInput(
            f"batch size (first dimension) {size} is outside 1..{signature.max_batch_size}, "
            f"the range model {quoted(signature.name)} accepts"
        )
