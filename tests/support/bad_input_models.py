"""Models for the table of bad inputs (tests/e2e/test_bad_inputs.py) that the other test models
do not cover: graphs whose run answers the wrong number of rows for a batch, a graph that fails
on every input (its fault, not the input's), and files Turnout must refuse to load while the
rest of the server serves."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.batching_models import slow_echo
from turnout.server.demo import finish_model


def _echo_then(
    name: str, tail: list[onnx.NodeProto], extra: list[onnx.TensorProto]
) -> onnx.ModelProto:
    """The slow echo model (``X`` [batch, width] INT64 → ``Y`` as declared; the run loops
    ``max(X)`` steps, so that one request can keep the instance busy) with its answer renamed
    ``echoed`` and ``tail`` computing ``Y`` from it."""
    model = slow_echo()
    graph = model.graph
    for node in graph.node:
        for index, output in enumerate(node.output):
            if output == "Y":
                node.output[index] = "echoed"
    graph.node.extend(tail)
    graph.initializer.extend(extra)
    graph.name = name
    return finish_model(graph)


def collapsed_rows() -> onnx.ModelProto:
    """Declares ``Y`` [batch, width] but sums the rows: a run of one row answers one row
    (correctly aligned), a run of several answers one row for all of them."""
    axis = numpy_helper.from_array(np.array([0], dtype=np.int64), "rows_axis")
    tail = [helper.make_node("ReduceSum", ["echoed", "rows_axis"], ["Y"], keepdims=1)]
    return _echo_then("collapsed_rows", tail, [axis])


def doubled_rows() -> onnx.ModelProto:
    """Declares ``Y`` [batch, width] but answers every row twice: twice the rows of any run."""
    tail = [helper.make_node("Concat", ["echoed", "echoed"], ["Y"], axis=0)]
    return _echo_then("doubled_rows", tail, [])


def always_fails() -> onnx.ModelProto:
    """``X`` [batch, 2] FP32 → ``Y`` [batch, 2] FP32, but the graph also builds a constant of a
    shape whose size overflows, so ONNX Runtime fails every run whatever the input holds (the
    model is at fault, not the request). It must be served with ``warmup: false`` (the warm-up
    run would fail the load) and graph optimisation off (constant folding would too)."""
    shape = numpy_helper.from_array(np.array([1 << 62, 1 << 62], dtype=np.int64), "huge_shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"]),
        helper.make_node("Shape", ["huge"], ["huge_dims"]),
        helper.make_node("Cast", ["huge_dims"], ["huge_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["huge_float"], ["huge_sum"], keepdims=1),
        helper.make_node("Mul", ["huge_sum", "zero"], ["nothing"]),
        helper.make_node("Add", ["X", "nothing"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "always_fails",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 2])],
        [shape, numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero")],
    )
    return finish_model(graph)


def bfloat16_identity() -> onnx.ModelProto:
    """A valid ONNX model whose input is BFLOAT16, a datatype Turnout does not serve."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])],
        "bfloat16",
        [helper.make_tensor_value_info("X", TensorProto.BFLOAT16, ["batch", 2])],
        [helper.make_tensor_value_info("Y", TensorProto.BFLOAT16, ["batch", 2])],
    )
    return finish_model(graph)


def write_empty_model(path: Path) -> Path:
    """A zero-byte ``model.onnx`` at ``path``; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path
