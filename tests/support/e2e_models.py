"""Models for the end-to-end tests that the shared test repository does not hold: graphs that
ONNX Runtime refuses at run time although the request fits their signature, and a file that is
not a model at all."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.onnx_models import ALL_TYPES, write_model
from turnout.server.demo import finish_model

TYPED = tuple(entry for entry in ALL_TYPES if entry[0] != "FP16")
GARBAGE = b"this is not an ONNX model\x00\xff\xfe" * 16


def gather_rows() -> onnx.ModelProto:
    """``INDEX`` [batch] INT64 picks rows of a constant [3, 2] table as ``ROW`` [batch, 2].

    An index outside -3..2 fits the signature, but ONNX Runtime refuses it when it runs
    (INVALID_ARGUMENT: indices out of bounds).
    """
    table = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "INDEX"], ["ROW"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("ROW", TensorProto.FLOAT, ["batch", 2])],
        [table],
    )
    return finish_model(graph)


def add_pair() -> onnx.ModelProto:
    """``A`` [batch, n] + ``B`` [batch, m] FP32 as ``SUM``: widths that do not broadcast fit
    the signature but make ONNX Runtime fail in the Add kernel."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["A", "B"], ["SUM"])],
        "add_pair",
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("B", TensorProto.FLOAT, ["batch", "m"]),
        ],
        [helper.make_tensor_value_info("SUM", TensorProto.FLOAT, ["batch", "k"])],
    )
    return finish_model(graph)


def identity_typed() -> onnx.ModelProto:
    """Like ``all_types`` without FP16: ``IN_<TYPE>`` [batch, 3] echoed as ``OUT_<TYPE>`` for
    every datatype that gRPC's typed ``contents`` can carry (FP16 travels only raw, and one
    request cannot mix raw and typed inputs)."""
    inputs, outputs, nodes = [], [], []
    for name, element, _ in TYPED:
        inputs.append(helper.make_tensor_value_info(f"IN_{name}", element, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{name}", element, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"IN_{name}"], [f"OUT_{name}"]))
    return finish_model(helper.make_graph(nodes, "typed", inputs, outputs))


def write_garbage_model(path: Path) -> Path:
    """Bytes that are not an ONNX model, at ``path``; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE)
    return path


def write_extra_models(root: Path) -> dict[str, Path]:
    """``gather``, ``add_pair`` and ``typed`` under ``root``; returns their paths by name."""
    models = {"gather": gather_rows(), "add_pair": add_pair(), "typed": identity_typed()}
    return {
        name: write_model(model, root / name / "1" / "model.onnx") for name, model in models.items()
    }
