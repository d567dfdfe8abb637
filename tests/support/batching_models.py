"""Models with a batch dimension whose run takes as long as a value in the request asks, for the
end-to-end tests of dynamic batching, queues, deadlines, instances and the cache: one slow
request keeps a version's instance busy while the requests sent after it wait in the queue.

Each holds a Loop whose trip count is the largest delay value of the batch (negative values
count as 0); its step count is folded into the outputs as an exact zero, so the loop cannot be
pruned and the outputs stay what the rest of the graph computes. A step takes very roughly 1 to
3 µs on one CPU core of the development machines.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from turnout.server.demo import build_mlp, finish_model

# Steps that keep an instance busy for roughly a second on the development machines (a served
# step took about 1.5 µs there): long enough for a test to queue a handful of requests behind it
# over loopback, short enough to keep a file fast.
BUSY_STEPS = 600_000


def _delay_nodes(peak: str, prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes that loop ``max(peak, 0)`` times (``peak``: an INT64 scalar) and leave
    ``{prefix}_zero`` [1] INT64, the step count minus the trip count: always 0."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
            helper.make_node("Add", ["count_in", f"{prefix}_one"], ["count_out"]),
        ],
        f"{prefix}_step",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.INT64, [1]),
        ],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), f"{prefix}_one")],
    )
    nodes = [
        helper.make_node("Max", [peak, f"{prefix}_floor"], [f"{prefix}_trips"]),
        helper.make_node(
            "Loop",
            [f"{prefix}_trips", f"{prefix}_keep_going", f"{prefix}_start"],
            [f"{prefix}_count"],
            body=body,
        ),
        helper.make_node("Sub", [f"{prefix}_count", f"{prefix}_trips"], [f"{prefix}_zero"]),
    ]
    constants = [
        numpy_helper.from_array(np.array(0, dtype=np.int64), f"{prefix}_floor"),
        numpy_helper.from_array(np.array(True), f"{prefix}_keep_going"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), f"{prefix}_start"),
    ]
    return nodes, constants


def slow_echo() -> onnx.ModelProto:
    """``X`` [batch, width] INT64 echoed as ``Y``; the run loops ``max(X)`` steps. The width is
    variable, so requests of different widths fit the model but can never share a run."""
    delay, constants = _delay_nodes("peak", "delay")
    nodes = [
        helper.make_node("ReduceMax", ["X"], ["peak"], keepdims=0),
        *delay,
        helper.make_node("Add", ["X", "delay_zero"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_echo",
        [helper.make_tensor_value_info("X", TensorProto.INT64, ["batch", "width"])],
        [helper.make_tensor_value_info("Y", TensorProto.INT64, ["batch", "width"])],
        constants,
    )
    return finish_model(graph)


def slow_mlp(seed: int) -> onnx.ModelProto:
    """The demo's classifier (``INPUT0`` [batch, 64] FP32 → ``OUTPUT0`` [batch, 10] FP32 and
    ``LABEL`` [batch] INT64) whose run also loops as many steps as the largest ``INPUT0[:, 0]``
    of the batch, truncated: ordinary rows (standard normal) take a few steps, a row whose
    first feature is ``BUSY_STEPS`` keeps the instance busy."""
    mlp = build_mlp(seed)
    graph = mlp.graph
    # The classifier's own nodes write "probabilities"; OUTPUT0 adds the loop's exact zero.
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name == "OUTPUT0":
                node.output[index] = "probabilities"
        for index, name in enumerate(node.input):
            if name == "OUTPUT0":
                node.input[index] = "probabilities"
    delay, constants = _delay_nodes("peak", "delay")
    column = numpy_helper.from_array(np.array([0], dtype=np.int64), "first_column")
    nodes = [
        helper.make_node("Slice", ["INPUT0", "first_column", "next_column", "first_column"], ["c"]),
        helper.make_node("ReduceMax", ["c"], ["peak_float"], keepdims=0),
        helper.make_node("Cast", ["peak_float"], ["peak"], to=TensorProto.INT64),
        *delay,
        helper.make_node("Cast", ["delay_zero"], ["float_zero"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["probabilities", "float_zero"], ["OUTPUT0"]),
    ]
    graph.node.extend(nodes)
    graph.initializer.extend(
        [
            column,
            numpy_helper.from_array(np.array([1], dtype=np.int64), "next_column"),
            *constants,
        ]
    )
    graph.name = "slow_mlp"
    return finish_model(graph)


def busy_mlp_rows(steps: int = BUSY_STEPS) -> np.ndarray:
    """One row of ``INPUT0`` for ``slow_mlp`` that loops ``steps`` steps."""
    row = np.zeros((1, 64), dtype=np.float32)
    row[0, 0] = steps
    return row


def slow_gather() -> onnx.ModelProto:
    """``DELAY`` [batch, 1] INT64 and ``INDEX`` [batch] INT64: loops ``max(DELAY)`` steps, then
    picks rows of a constant [3, 2] table as ``ROW`` [batch, 2] FP32 (row i holds 2i, 2i + 1).
    An index outside -3..2 fits the signature, but ONNX Runtime refuses the run."""
    delay, constants = _delay_nodes("peak", "delay")
    table = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "table")
    nodes = [
        helper.make_node("ReduceMax", ["DELAY"], ["peak"], keepdims=0),
        *delay,
        helper.make_node("Add", ["INDEX", "delay_zero"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["ROW"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_gather",
        [
            helper.make_tensor_value_info("DELAY", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("ROW", TensorProto.FLOAT, ["batch", 2])],
        [table, *constants],
    )
    return finish_model(graph)


def slow_text() -> onnx.ModelProto:
    """``DELAY`` [batch, 1] INT64 and ``TEXT`` [batch] STRING: loops ``max(DELAY)`` steps and
    echoes ``TEXT`` as ``ECHO`` and ``DELAY`` as ``WAITED``."""
    delay, constants = _delay_nodes("peak", "delay")
    nodes = [
        helper.make_node("ReduceMax", ["DELAY"], ["peak"], keepdims=0),
        *delay,
        helper.make_node("Add", ["DELAY", "delay_zero"], ["WAITED"]),
        helper.make_node("Identity", ["TEXT"], ["ECHO"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_text",
        [
            helper.make_tensor_value_info("DELAY", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("WAITED", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["batch"]),
        ],
        constants,
    )
    return finish_model(graph)
