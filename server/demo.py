"""``turnout demo DIR``: a runnable example built in code, with no downloads.

It writes a Triton-style model repository (two versions of a small classifier whose weights come
from a fixed seed), a reference data set for drift monitoring and a ``turnout.yaml`` serving it.
"""

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ONNX Runtime 1.31 reads IR versions up to 13; onnx >= 1.19 writes 14 unless told otherwise.
IR_VERSION = 10
OPSET = 17
DEMO_MODEL = "mlp"
FEATURES = 64
CLASSES = 10
HIDDEN = 256
REFERENCE_ROWS = 2000
REFERENCE_SEED = 7  # the seed of the reference set the demo writes (and the load test sends)


def build_mlp(
    seed: int, features: int = FEATURES, hidden: int = HIDDEN, classes: int = CLASSES
) -> onnx.ModelProto:
    """A features → hidden → hidden → classes ReLU classifier with seeded weights.

    Input ``INPUT0`` [batch, features] FP32; outputs ``OUTPUT0`` [batch, classes] FP32 class
    probabilities and ``LABEL`` [batch] INT64, the most probable class.
    """
    rng = np.random.default_rng(seed)
    sizes = [features, hidden, hidden, classes]
    initializers = []
    nodes = []
    current = "INPUT0"
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"W{layer}"),
            numpy_helper.from_array(bias, f"B{layer}"),
        ]
        output = f"logits{layer}" if layer == len(sizes) - 2 else f"hidden{layer}"
        nodes.append(helper.make_node("Gemm", [current, f"W{layer}", f"B{layer}"], [output]))
        if layer < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [output], [f"relu{layer}"]))
            output = f"relu{layer}"
        current = output
    nodes.append(helper.make_node("Softmax", [current], ["OUTPUT0"], axis=1))
    nodes.append(helper.make_node("ArgMax", ["OUTPUT0"], ["LABEL"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("LABEL", TensorProto.INT64, ["batch"]),
        ],
        initializers,
    )
    return finish_model(graph)


def finish_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """A checked model for ``graph`` at the IR version and opset ONNX Runtime reads."""
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="turnout"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def reference_inputs(seed: int, rows: int = REFERENCE_ROWS, features: int = FEATURES) -> np.ndarray:
    """Rows like the ones the demo model was "trained" on: a normal per feature, each with its
    own mean and spread."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-1.0, 1.0, features)
    scales = rng.uniform(0.5, 1.5, features)
    return (rng.standard_normal((rows, features)) * scales + means).astype(np.float32)


def write_demo(directory: Path) -> Path:
    """Write the demo into ``directory``; returns the path of its ``turnout.yaml``."""
    repository = directory / "models" / DEMO_MODEL
    for version, seed in ((1, 1), (2, 2)):
        target = repository / str(version) / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(build_mlp(seed), target)
    np.savez(repository / "reference.npz", INPUT0=reference_inputs(seed=REFERENCE_SEED))
    config = directory / "turnout.yaml"
    config.write_text(_DEMO_CONFIG, encoding="utf-8")
    return config


_DEMO_CONFIG = f"""\
# Written by `turnout demo`. Serve it with: turnout serve --config turnout.yaml
# Two versions of one classifier behind one endpoint, "{DEMO_MODEL}", as a canary: 90 % of
# requests go to version 1 and 10 % to version 2 (sticky per x-routing-key header).
# /v2/models/{DEMO_MODEL}/versions/N/infer pins a version. Set TURNOUT_ADMIN_TOKEN to change the
# route at run time (turnout routes --help). Every request is sampled for drift against the
# reference rows; records land in monitoring/ (turnout drift report --sink monitoring/drift.db).
server:
  http: {{host: 127.0.0.1, port: 8000}}
  grpc: {{host: 127.0.0.1, port: 8001}}
models:
  - name: {DEMO_MODEL}
    version: 1
    path: models/{DEMO_MODEL}/1/model.onnx
    monitoring: &drift
      sample_rate: 1.0
      reference: models/{DEMO_MODEL}/reference.npz
      window: {{samples: 500, seconds: 30}}
  - name: {DEMO_MODEL}
    version: 2
    path: models/{DEMO_MODEL}/2/model.onnx
    monitoring: *drift
monitoring:
  jsonl: {{path: monitoring/drift.jsonl}}
  sqlite: {{path: monitoring/drift.db}}
routes:
  {DEMO_MODEL}: {{policy: canary, weights: {{"1": 90, "2": 10}}}}
state_dir: state
model_root: models
"""
