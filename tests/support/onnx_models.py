"""Small real ONNX models the tests build with onnx.helper."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from turnout.server.demo import build_mlp, finish_model

# Every datatype Turnout serves, as (V2 name, ONNX element type, numpy dtype).
ALL_TYPES = (
    ("BOOL", TensorProto.BOOL, np.bool_),
    ("UINT8", TensorProto.UINT8, np.uint8),
    ("UINT16", TensorProto.UINT16, np.uint16),
    ("UINT32", TensorProto.UINT32, np.uint32),
    ("UINT64", TensorProto.UINT64, np.uint64),
    ("INT8", TensorProto.INT8, np.int8),
    ("INT16", TensorProto.INT16, np.int16),
    ("INT32", TensorProto.INT32, np.int32),
    ("INT64", TensorProto.INT64, np.int64),
    ("FP16", TensorProto.FLOAT16, np.float16),
    ("FP32", TensorProto.FLOAT, np.float32),
    ("FP64", TensorProto.DOUBLE, np.float64),
)


def identity_all_types() -> onnx.ModelProto:
    """Inputs ``IN_<TYPE>`` [batch, 3] of every numeric type, each echoed as ``OUT_<TYPE>``."""
    inputs, outputs, nodes = [], [], []
    for name, element, _ in ALL_TYPES:
        inputs.append(helper.make_tensor_value_info(f"IN_{name}", element, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{name}", element, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"IN_{name}"], [f"OUT_{name}"]))
    return finish_model(helper.make_graph(nodes, "all_types", inputs, outputs))


def echo_strings() -> onnx.ModelProto:
    """``TEXT`` [batch] STRING echoed as ``ECHO``."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["TEXT"], ["ECHO"])],
        "strings",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["batch"])],
    )
    return finish_model(graph)


def fixed_shape() -> onnx.ModelProto:
    """No batch dimension: ``X`` [2, 3] FP32 plus a constant gives ``Y`` [2, 3]."""
    offset = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "offset")
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "offset"], ["Y"])],
        "fixed",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
        [offset],
    )
    return finish_model(graph)


def slow_counter() -> onnx.ModelProto:
    """Takes as long as asked: a Loop of ``ITERATIONS`` [1] INT64 steps, each adding one;
    ``COUNT`` [1] INT64 is the number of steps taken. Lets tests keep a request in flight."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
            helper.make_node("Add", ["count_in", "one"], ["count_out"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.INT64, [1]),
        ],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "one")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["ITERATIONS"], ["trip_count"]),
            helper.make_node("Loop", ["trip_count", "keep_going", "start"], ["COUNT"], body=body),
        ],
        "slow",
        [helper.make_tensor_value_info("ITERATIONS", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("COUNT", TensorProto.INT64, [1])],
        [
            numpy_helper.from_array(np.array(True), "keep_going"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
        ],
    )
    return finish_model(graph)


def write_model(model: onnx.ModelProto, path: Path) -> Path:
    """Save ``model`` at ``path``, creating directories; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


REPOSITORY_MODELS = frozenset({"mlp", "all_types", "strings", "fixed", "slow"})
"""The models ``write_repository`` writes."""


def write_repository(root: Path) -> Path:
    """A Triton-style repository of every test model; returns ``root``."""
    write_model(build_mlp(seed=1), root / "mlp" / "1" / "model.onnx")
    write_model(build_mlp(seed=2), root / "mlp" / "2" / "model.onnx")
    write_model(identity_all_types(), root / "all_types" / "1" / "model.onnx")
    write_model(echo_strings(), root / "strings" / "1" / "model.onnx")
    write_model(fixed_shape(), root / "fixed" / "1" / "model.onnx")
    write_model(slow_counter(), root / "slow" / "1" / "model.onnx")
    return root
