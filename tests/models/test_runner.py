"""Loading a model version and running requests on it (models/loader.py, session.py, runner.py,
instance.py), on real ONNX models written to a temporary folder and run on the CPU."""

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.onnx_models import (
    ALL_TYPES,
    echo_strings,
    fixed_shape,
    identity_all_types,
    slow_counter,
    write_model,
)
from turnout.errors import DeadlineExceeded, InvalidInput
from turnout.models import providers
from turnout.models.cache import CacheSettings
from turnout.models.loader import InstanceGroup, IoBinding, VersionSpec, load_version
from turnout.models.providers import CPU, Device
from turnout.models.runner import ModelRunner
from turnout.models.scheduler import BatchPolicy
from turnout.models.session import (
    DEFAULT_MAX_BATCH_SIZE,
    PLATFORM,
    SessionSettings,
    UnsupportedModel,
    read_signature,
)
from turnout.models.types import (
    ModelRequest,
    ModelResponse,
    ModelSignature,
    PlacedGroup,
    RunStats,
)
from turnout.server.demo import build_mlp, finish_model

T = TypeVar("T")
FEATURES = 4
CLASSES = 3
# slow_counter loops this many times; at about 1-2 µs a step, long enough to keep the only
# instance busy while another request arrives, short enough to keep the test fast.
BUSY_ITERATIONS = 100_000


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def small_mlp(seed: int = 1) -> onnx.ModelProto:
    return build_mlp(seed, features=FEATURES, hidden=8, classes=CLASSES)


def rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)


def direct(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What ONNX Runtime itself gives for ``feed``, for comparison."""
    session = ort.InferenceSession(str(path), providers=[CPU])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def thread_names() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.is_alive()}


class Loader:
    """Loads model versions on the CPU and closes them when the test ends."""

    def __init__(self) -> None:
        self.runners: list[ModelRunner] = []

    def __call__(
        self,
        path: Path,
        name: str = "model",
        version: str = "1",
        device: Device | None = None,
        instance_count: int = 1,
        **options: Any,
    ) -> ModelRunner:
        """Load a version with ``instance_count`` instances on ``device`` (the CPU by default),
        unless ``options`` give the instance groups themselves."""
        options.setdefault(
            "instance_groups", (InstanceGroup(device or Device("cpu"), instance_count),)
        )
        runner = load_version(VersionSpec(name, version, path, **options))
        self.runners.append(runner)
        return runner

    def close(self) -> None:
        for runner in self.runners:
            runner.close()


@pytest.fixture
def load() -> Iterator[Loader]:
    loader = Loader()
    yield loader
    loader.close()


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return write_model(small_mlp(), tmp_path / "mlp" / "model.onnx")


@pytest.fixture
def slow_path(tmp_path: Path) -> Path:
    return write_model(slow_counter(), tmp_path / "slow" / "model.onnx")


def graph_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    return finish_model(helper.make_graph(nodes, "test", inputs, outputs, initializers or []))


def unknown_dims() -> onnx.ModelProto:
    """``X`` [unnamed, "n", 3] FP32 echoed as ``Y``."""
    return graph_model(
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, "n", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, "n", 3])],
    )


def batch_in_scalar_out() -> onnx.ModelProto:
    """``X`` ["batch", 3] FP32 summed into a scalar ``TOTAL``: not every tensor is batched."""
    return graph_model(
        [helper.make_node("ReduceSum", ["X"], ["TOTAL"], keepdims=0)],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("TOTAL", TensorProto.FLOAT, [])],
    )


def bfloat16_identity() -> onnx.ModelProto:
    return graph_model(
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.BFLOAT16, ["batch", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.BFLOAT16, ["batch", 3])],
    )


def fails_on_zeros_of_one_row() -> onnx.ModelProto:
    """``X`` ["n"] reshaped to [2, -1]: fine for an even length, an ONNX Runtime error for the
    single element warm-up feeds it."""
    return graph_model(
        [helper.make_node("Reshape", ["X", "shape"], ["Y"])],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, None])],
        [numpy_helper.from_array(np.array([2, -1], dtype=np.int64), "shape")],
    )


# -- signatures ----------------------------------------------------------------------------------


def shapes(signature: ModelSignature) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {
        spec.name: (spec.datatype.name, spec.shape)
        for spec in (*signature.inputs, *signature.outputs)
    }


SIGNATURES = [
    pytest.param(
        (small_mlp, None),
        {
            "INPUT0": ("FP32", (-1, FEATURES)),
            "OUTPUT0": ("FP32", (-1, CLASSES)),
            "LABEL": ("INT64", (-1,)),
        },
        DEFAULT_MAX_BATCH_SIZE,
        id="mlp-default-batch",
    ),
    pytest.param(
        (small_mlp, 8),
        {
            "INPUT0": ("FP32", (-1, FEATURES)),
            "OUTPUT0": ("FP32", (-1, CLASSES)),
            "LABEL": ("INT64", (-1,)),
        },
        8,
        id="mlp-batch-8",
    ),
    pytest.param(
        (small_mlp, 0),
        {
            "INPUT0": ("FP32", (-1, FEATURES)),
            "OUTPUT0": ("FP32", (-1, CLASSES)),
            "LABEL": ("INT64", (-1,)),
        },
        0,
        id="mlp-batch-off",
    ),
    pytest.param(
        (fixed_shape, None), {"X": ("FP32", (2, 3)), "Y": ("FP32", (2, 3))}, 0, id="fixed"
    ),
    pytest.param(
        (slow_counter, None),
        {"ITERATIONS": ("INT64", (1,)), "COUNT": ("INT64", (1,))},
        0,
        id="slow-counter",
    ),
    pytest.param(
        (echo_strings, None),
        {"TEXT": ("BYTES", (-1,)), "ECHO": ("BYTES", (-1,))},
        DEFAULT_MAX_BATCH_SIZE,
        id="strings",
    ),
    pytest.param(
        (unknown_dims, None),
        {"X": ("FP32", (-1, -1, 3)), "Y": ("FP32", (-1, -1, 3))},
        DEFAULT_MAX_BATCH_SIZE,
        id="unknown-dims",
    ),
    pytest.param(
        (batch_in_scalar_out, None),
        {"X": ("FP32", (-1, 3)), "TOTAL": ("FP32", ())},
        0,
        id="scalar-output-not-batched",
    ),
    pytest.param(
        (identity_all_types, None),
        {
            f"{prefix}_{name}": (name, (-1, 3))
            for name, _, _ in ALL_TYPES
            for prefix in ("IN", "OUT")
        },
        DEFAULT_MAX_BATCH_SIZE,
        id="all-types",
    ),
]


@pytest.mark.parametrize(("given", "expected", "expected_batch"), SIGNATURES)
def test_signature(
    load: Loader,
    tmp_path: Path,
    given: tuple[Callable[[], onnx.ModelProto], int | None],
    expected: dict[str, tuple[str, tuple[int, ...]]],
    expected_batch: int,
) -> None:
    build, max_batch_size = given
    path = write_model(build(), tmp_path / "model.onnx")

    signature = load(path, "sig", "7", max_batch_size=max_batch_size).signature

    assert shapes(signature) == expected
    assert signature.max_batch_size == expected_batch
    assert (signature.name, signature.version, signature.platform) == ("sig", "7", PLATFORM)


def test_read_signature_of_a_session(mlp_path: Path) -> None:
    session = ort.InferenceSession(str(mlp_path), providers=[CPU])

    signature = read_signature(session, "mlp", "3", None)

    assert [spec.name for spec in signature.inputs] == ["INPUT0"]
    assert [spec.name for spec in signature.outputs] == ["OUTPUT0", "LABEL"]
    assert signature.input("INPUT0") is signature.inputs[0]
    assert signature.output("LABEL") is signature.outputs[1]
    assert signature.input("OUTPUT0") is None
    assert signature.output("INPUT0") is None
    assert signature.max_batch_size == DEFAULT_MAX_BATCH_SIZE


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(fixed_shape, id="fixed"),
        pytest.param(batch_in_scalar_out, id="scalar-output"),
    ],
)
def test_max_batch_size_is_refused_for_a_model_without_batch_dimension(
    load: Loader, tmp_path: Path, build: Callable[[], onnx.ModelProto]
) -> None:
    path = write_model(build(), tmp_path / "model.onnx")

    with pytest.raises(UnsupportedModel) as caught:
        load(path, "nobatch", max_batch_size=4)

    assert str(caught.value) == (
        "max_batch_size > 0 needs a variable first dimension on every input and output"
    )
    assert not any(name.startswith("ort-nobatch-") for name in thread_names())


def test_unserved_tensor_type_is_refused(load: Loader, tmp_path: Path) -> None:
    path = write_model(bfloat16_identity(), tmp_path / "model.onnx")

    with pytest.raises(UnsupportedModel) as caught:
        load(path)

    assert str(caught.value) == "tensor 'X' has type tensor(bfloat16), which is not served"


# -- placement -----------------------------------------------------------------------------------


def test_cpu_placement(load: Loader, mlp_path: Path) -> None:
    runner = load(mlp_path, instance_count=2)

    (group,) = runner.placement.groups
    assert group.kind == "cpu"
    assert group.device_id == 0
    assert group.count == 2
    assert group.providers == (CPU,)
    assert runner.placement.instance_count == 2


def test_auto_without_gpu_runs_on_the_cpu_and_says_so(
    load: Loader, mlp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(providers, "cuda_device_count", lambda: 0)

    with caplog.at_level(logging.INFO, logger="turnout.models"):
        runner = load(mlp_path, "auto-model", device=Device("auto"))

    assert runner.placement.groups == (PlacedGroup("cpu", 0, 1, (CPU,)),)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages[-1] == (
        logging.INFO,
        "model 'auto-model' version 1 loaded from model.onnx: "
        f"1 on cpu:0 (CPUExecutionProvider); batching up to {DEFAULT_MAX_BATCH_SIZE} rows",
    )
    assert any(level == logging.INFO and "running on the CPU" in m for level, m in messages)
    assert not any(level >= logging.WARNING for level, _ in messages)


# -- inference -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5, DEFAULT_MAX_BATCH_SIZE])
def test_infer_matches_onnx_runtime(load: Loader, mlp_path: Path, batch: int) -> None:
    runner = load(mlp_path)
    feed = {"INPUT0": rows(batch, seed=batch)}

    response = run(runner.infer(ModelRequest(feed)))

    expected = direct(mlp_path, feed)
    assert list(response.outputs) == ["OUTPUT0", "LABEL"]
    np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
    np.testing.assert_array_equal(response.outputs["LABEL"], expected["LABEL"])
    assert response.outputs["OUTPUT0"].dtype == np.float32
    assert response.outputs["LABEL"].dtype == np.int64


def test_infer_every_datatype(load: Loader, tmp_path: Path) -> None:
    runner = load(write_model(identity_all_types(), tmp_path / "model.onnx"))
    rng = np.random.default_rng(0)
    feed = {
        f"IN_{name}": (rng.integers(0, 100, (2, 3)) % (2 if name == "BOOL" else 100)).astype(dtype)
        for name, _, dtype in ALL_TYPES
    }

    response = run(runner.infer(ModelRequest(feed)))

    assert set(response.outputs) == {f"OUT_{name}" for name, _, _ in ALL_TYPES}
    for name, _, dtype in ALL_TYPES:
        output = response.outputs[f"OUT_{name}"]
        assert output.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(output, feed[f"IN_{name}"])


def test_infer_fixed_shape(load: Loader, tmp_path: Path) -> None:
    runner = load(write_model(fixed_shape(), tmp_path / "model.onnx"))
    x = np.full((2, 3), 0.5, dtype=np.float32)

    response = run(runner.infer(ModelRequest({"X": x})))

    np.testing.assert_array_equal(response.outputs["Y"], x + np.arange(6).reshape(2, 3))
    assert response.stats.rows == 1


@pytest.mark.parametrize(
    "requested",
    [
        pytest.param(("LABEL",), id="label"),
        pytest.param(("OUTPUT0",), id="probabilities"),
        pytest.param(("LABEL", "OUTPUT0"), id="both-reordered"),
    ],
)
def test_requested_outputs(load: Loader, mlp_path: Path, requested: tuple[str, ...]) -> None:
    runner = load(mlp_path)
    feed = {"INPUT0": rows(3, seed=7)}

    response = run(runner.infer(ModelRequest(feed, requested)))

    expected = direct(mlp_path, feed)
    assert tuple(response.outputs) == requested
    for name in requested:
        np.testing.assert_allclose(response.outputs[name], expected[name], rtol=1e-5)


def test_invalid_request_is_refused_before_running(load: Loader, mlp_path: Path) -> None:
    runner = load(mlp_path, "checked")

    with pytest.raises(InvalidInput) as caught:
        run(runner.infer(ModelRequest({"INPUT0": np.zeros((2, FEATURES + 1), np.float32)})))

    assert caught.value.message == (
        f"input 'INPUT0': expected shape [-1, {FEATURES}], got [2, {FEATURES + 1}]"
    )


def test_big_endian_input_gives_the_same_outputs(load: Loader, mlp_path: Path) -> None:
    """Validation takes a big-endian FP32 array as FP32, so it must reach ONNX Runtime as the
    same numbers."""
    runner = load(mlp_path)
    native = rows(2, seed=3)

    response = run(runner.infer(ModelRequest({"INPUT0": native.astype(">f4")})))

    expected = direct(mlp_path, {"INPUT0": native})
    np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)


# -- BYTES ---------------------------------------------------------------------------------------


@pytest.fixture
def strings(load: Loader, tmp_path: Path) -> ModelRunner:
    return load(write_model(echo_strings(), tmp_path / "strings.onnx"), "strings")


def test_bytes_round_trip(strings: ModelRunner) -> None:
    elements = [b"hello", "héllo wörld ✓".encode(), b"", b"tab\there"]
    text = np.array(elements, dtype=object)

    response = run(strings.infer(ModelRequest({"TEXT": text})))

    echo = response.outputs["ECHO"]
    assert echo.shape == (4,)
    assert [str(element).encode() for element in echo] == elements
    assert response.stats.rows == 4


def test_text_elements_are_accepted_too(strings: ModelRunner) -> None:
    text = np.array(["plain", "ünïcode"], dtype=object)

    response = run(strings.infer(ModelRequest({"TEXT": text})))

    assert response.outputs["ECHO"].tolist() == ["plain", "ünïcode"]


@pytest.mark.parametrize(
    ("elements", "bad_index"),
    [
        pytest.param([b"\xff"], 0, id="first"),
        pytest.param([b"ok", b"ok", b"\xc3\x28"], 2, id="third"),
        pytest.param([b"ok", b"caf\xe9"], 1, id="latin-1"),
    ],
)
def test_invalid_utf8_is_refused(
    strings: ModelRunner, elements: list[bytes], bad_index: int
) -> None:
    with pytest.raises(InvalidInput) as caught:
        run(strings.infer(ModelRequest({"TEXT": np.array(elements, dtype=object)})))

    assert caught.value.message == (
        f"input 'TEXT': element {bad_index} is not valid UTF-8, which ONNX string tensors need"
    )
    # The refusal took no instance: the next request still runs.
    response = run(strings.infer(ModelRequest({"TEXT": np.array([b"after"], dtype=object)})))
    assert response.outputs["ECHO"].tolist() == ["after"]


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("instances", [1, 3])
def test_concurrent_requests_each_get_their_own_rows(
    load: Loader, mlp_path: Path, instances: int
) -> None:
    runner = load(mlp_path, f"concurrent{instances}", instance_count=instances)
    feeds = [{"INPUT0": rows(1 + index % 4, seed=100 + index)} for index in range(12)]

    async def all_at_once() -> list[ModelResponse]:
        return await asyncio.gather(*(runner.infer(ModelRequest(feed)) for feed in feeds))

    responses = run(all_at_once())

    for feed, response in zip(feeds, responses, strict=True):
        expected = direct(mlp_path, feed)
        np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
        np.testing.assert_array_equal(response.outputs["LABEL"], expected["LABEL"])
        assert response.stats.rows == feed["INPUT0"].shape[0]


@pytest.mark.parametrize("instances", [1, 3])
def test_concurrent_slow_requests_each_get_their_own_count(
    load: Loader, slow_path: Path, instances: int
) -> None:
    runner = load(slow_path, f"slowcount{instances}", instance_count=instances)
    iterations = [5_000, 1, 20_000, 300, 10_000, 7]

    async def all_at_once() -> list[ModelResponse]:
        return await asyncio.gather(
            *(
                runner.infer(ModelRequest({"ITERATIONS": np.array([n], dtype=np.int64)}))
                for n in iterations
            )
        )

    responses = run(all_at_once())

    assert [int(r.outputs["COUNT"][0]) for r in responses] == iterations
    if instances == 1:
        # Every request after the first waited for the only instance.
        assert all(r.stats.queue_seconds > 0 for r in responses[1:])


def test_instances_each_have_a_thread_until_closed(load: Loader, mlp_path: Path) -> None:
    runner = load(mlp_path, "threads", "4", instance_count=3)
    names = {f"ort-threads-4-{index}" for index in range(3)}

    assert names <= thread_names()
    runner.close()
    assert not names & thread_names()


# -- deadlines -----------------------------------------------------------------------------------


def busy_request() -> ModelRequest:
    return ModelRequest({"ITERATIONS": np.array([BUSY_ITERATIONS], dtype=np.int64)})


def late_request(deadline: float | None) -> ModelRequest:
    return ModelRequest({"ITERATIONS": np.array([3], dtype=np.int64)}, deadline=deadline)


def test_past_deadline_while_the_only_instance_is_busy(load: Loader, slow_path: Path) -> None:
    runner = load(slow_path, "slow")

    async def scenario() -> tuple[tuple[ModelResponse | BaseException, ...], ModelResponse]:
        first = await asyncio.gather(
            runner.infer(busy_request()),
            runner.infer(late_request(time.monotonic() - 1.0)),
            return_exceptions=True,
        )
        after = await runner.infer(late_request(None))
        return first, after

    (busy, late), after = run(scenario())

    assert isinstance(busy, ModelResponse)
    assert int(busy.outputs["COUNT"][0]) == BUSY_ITERATIONS
    assert isinstance(late, DeadlineExceeded)
    assert late.message == (
        "model 'slow' version 1: the request's deadline passed before it could run"
    )
    # The instance went back to the pool: a later request runs.
    assert int(after.outputs["COUNT"][0]) == 3


def test_distant_deadline_waits_for_the_busy_instance(load: Loader, slow_path: Path) -> None:
    runner = load(slow_path, "patient")

    async def scenario() -> tuple[ModelResponse, ModelResponse]:
        return await asyncio.gather(
            runner.infer(busy_request()),
            runner.infer(late_request(time.monotonic() + 600.0)),
        )

    busy, waited = run(scenario())

    assert int(busy.outputs["COUNT"][0]) == BUSY_ITERATIONS
    assert int(waited.outputs["COUNT"][0]) == 3
    assert waited.stats.queue_seconds > 0


def test_past_deadline_is_not_run_on_an_idle_instance(load: Loader, slow_path: Path) -> None:
    """A request whose deadline passed before it ran is answered DeadlineExceeded (README: "request
    deadline passed before it ran"), even when an instance is free."""
    runner = load(slow_path, "idle")

    with pytest.raises(DeadlineExceeded):
        run(runner.infer(late_request(time.monotonic() - 1.0)))


# -- statistics ----------------------------------------------------------------------------------


def test_run_stats(load: Loader, mlp_path: Path, slow_path: Path) -> None:
    mlp = load(mlp_path, "stats-mlp")
    slow = load(slow_path, "stats-slow")

    batched = run(mlp.infer(ModelRequest({"INPUT0": rows(3, seed=1)}))).stats
    unbatched = run(slow.infer(late_request(None))).stats

    assert batched.rows == 3
    assert unbatched.rows == 1
    for stats in (batched, unbatched):
        assert stats.queue_seconds >= 0
        assert stats.run_seconds > 0
        assert stats.queue_seconds < 60
        assert stats.run_seconds < 60
        # Each ran alone, and neither version has a cache.
        assert stats.batch_rows == stats.rows
        assert stats.cache_hit is None


def test_every_execution_is_counted_by_batch_size(load: Loader, mlp_path: Path) -> None:
    runner = load(mlp_path, "counted")

    for count in (3, 1, 3):
        run(runner.infer(ModelRequest({"INPUT0": rows(count, seed=count)})))

    counters = runner.counters
    assert counters.executions == 3
    assert {size: times.executions for size, times in counters.by_batch_size.items()} == {
        1: 1,
        3: 2,
    }
    assert counters.queued == 0


# -- instance groups, batching policy, I/O binding, timeout and cache ----------------------------


def cpu(count: int) -> InstanceGroup:
    return InstanceGroup(Device("cpu"), count)


def test_instance_groups_are_placed_in_order(
    load: Loader, mlp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="turnout.models"):
        runner = load(mlp_path, "groups", "2", instance_groups=(cpu(1), cpu(2)))

    assert runner.placement.groups == (
        PlacedGroup("cpu", 0, 1, (CPU,)),
        PlacedGroup("cpu", 0, 2, (CPU,)),
    )
    assert runner.placement.instance_count == 3
    assert {f"ort-groups-2-{index}" for index in range(3)} <= thread_names()
    assert caplog.records[-1].getMessage() == (
        "model 'groups' version 2 loaded from model.onnx: "
        "1 on cpu:0 (CPUExecutionProvider), 2 on cpu:0 (CPUExecutionProvider); "
        f"batching up to {DEFAULT_MAX_BATCH_SIZE} rows"
    )


def test_every_instance_of_every_group_is_closed(load: Loader, mlp_path: Path) -> None:
    runner = load(mlp_path, "closegroups", instance_groups=(cpu(2), cpu(1)))
    names = {f"ort-closegroups-1-{index}" for index in range(3)}
    assert names <= thread_names()

    runner.close()

    assert not names & thread_names()


def test_requests_across_instance_groups_each_get_their_own_rows(
    load: Loader, mlp_path: Path
) -> None:
    runner = load(mlp_path, "spread", instance_groups=(cpu(1), cpu(2)))
    feeds = [{"INPUT0": rows(1 + index % 3, seed=200 + index)} for index in range(9)]

    async def all_at_once() -> list[ModelResponse]:
        return await asyncio.gather(*(runner.infer(ModelRequest(feed)) for feed in feeds))

    for feed, response in zip(feeds, run(all_at_once()), strict=True):
        expected = direct(mlp_path, feed)
        np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
        assert response.stats.rows == feed["INPUT0"].shape[0]
        assert response.stats.batch_rows >= response.stats.rows


POLICIES = [
    pytest.param((small_mlp, {}), BatchPolicy(DEFAULT_MAX_BATCH_SIZE, 0.0, (), 512), id="defaults"),
    pytest.param(
        (small_mlp, {"dynamic_batching": False}),
        BatchPolicy(0, 0.0, (), 512),
        id="batching-off",
    ),
    pytest.param(
        (
            small_mlp,
            {
                "max_batch_size": 8,
                "max_queue_delay_s": 0.001,
                "preferred_batch_sizes": (2, 8),
                "max_queue_size": 10,
            },
        ),
        BatchPolicy(8, 0.001, (2, 8), 10),
        id="everything-set",
    ),
    pytest.param((fixed_shape, {}), BatchPolicy(0, 0.0, (), 512), id="no-batch-dimension"),
]


@pytest.mark.parametrize(("given", "expected"), POLICIES)
def test_batch_policy_comes_from_the_spec_and_the_signature(
    load: Loader,
    tmp_path: Path,
    given: tuple[Callable[[], onnx.ModelProto], dict[str, Any]],
    expected: BatchPolicy,
) -> None:
    build, options = given
    path = write_model(build(), tmp_path / "model.onnx")

    runner = load(path, "policy", **options)

    assert runner.policy == expected


def test_batching_off_keeps_the_batch_dimension(
    load: Loader, mlp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without dynamic batching requests still carry up to max_batch_size rows each; they are
    just never run together."""
    with caplog.at_level(logging.INFO, logger="turnout.models"):
        runner = load(mlp_path, "unbatched", dynamic_batching=False)
    feed = {"INPUT0": rows(5, seed=5)}

    response = run(runner.infer(ModelRequest(feed)))

    assert runner.signature.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert caplog.records[-1].getMessage().endswith("; batching off")
    np.testing.assert_allclose(
        response.outputs["OUTPUT0"], direct(mlp_path, feed)["OUTPUT0"], rtol=1e-5
    )
    assert response.stats.rows == 5


@pytest.mark.parametrize(
    ("given", "preferred", "message"),
    [
        pytest.param(
            (small_mlp, 8),
            (4, 16),
            "preferred_batch_sizes [16] exceed max_batch_size 8",
            id="above-the-given-max",
        ),
        pytest.param(
            (small_mlp, None),
            (64, 65, 128),
            f"preferred_batch_sizes [65, 128] exceed max_batch_size {DEFAULT_MAX_BATCH_SIZE}",
            id="above-the-default-max",
        ),
        pytest.param(
            (fixed_shape, None),
            (1,),
            "preferred_batch_sizes [1] exceed max_batch_size 0",
            id="no-batch-dimension",
        ),
    ],
)
def test_preferred_batch_sizes_above_the_max_fail_the_load(
    load: Loader,
    tmp_path: Path,
    given: tuple[Callable[[], onnx.ModelProto], int | None],
    preferred: tuple[int, ...],
    message: str,
) -> None:
    build, max_batch_size = given
    path = write_model(build(), tmp_path / "model.onnx")

    with pytest.raises(UnsupportedModel) as caught:
        load(
            path,
            "toobig",
            instance_count=2,
            max_batch_size=max_batch_size,
            preferred_batch_sizes=preferred,
        )

    assert str(caught.value) == message
    assert not any(name.startswith("ort-toobig-") for name in thread_names())


@pytest.mark.parametrize("io_binding", ["auto", "on", "off"])
def test_io_binding_gives_the_same_answers(
    load: Loader, mlp_path: Path, io_binding: IoBinding
) -> None:
    runner = load(mlp_path, io_binding=io_binding)
    feed = {"INPUT0": rows(6, seed=13)}

    response = run(runner.infer(ModelRequest(feed)))

    expected = direct(mlp_path, feed)
    np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
    np.testing.assert_array_equal(response.outputs["LABEL"], expected["LABEL"])


def test_io_binding_on_every_datatype(load: Loader, tmp_path: Path) -> None:
    runner = load(write_model(identity_all_types(), tmp_path / "model.onnx"), io_binding="on")
    feed = {f"IN_{name}": np.ones((2, 3), dtype=dtype) for name, _, dtype in ALL_TYPES}

    response = run(runner.infer(ModelRequest(feed)))

    for name, _, dtype in ALL_TYPES:
        output = response.outputs[f"OUT_{name}"]
        assert output.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(output, feed[f"IN_{name}"])


def test_io_binding_on_serves_string_tensors(load: Loader, tmp_path: Path) -> None:
    """ONNX Runtime binds no string tensors; a BYTES model must still load and answer with
    ``io_binding: on`` (as it must with ``auto`` on a GPU)."""
    runner = load(write_model(echo_strings(), tmp_path / "strings.onnx"), io_binding="on")

    response = run(runner.infer(ModelRequest({"TEXT": np.array([b"a", b"bc"], dtype=object)})))

    assert response.outputs["ECHO"].tolist() == ["a", "bc"]


def test_version_timeout_drops_a_request_still_queued(load: Loader, slow_path: Path) -> None:
    runner = load(slow_path, "timed", timeout_s=0.01)

    async def scenario() -> tuple[ModelResponse | BaseException, ...]:
        return tuple(
            await asyncio.gather(
                runner.infer(busy_request()),
                runner.infer(late_request(None)),
                return_exceptions=True,
            )
        )

    busy, queued = run(scenario())

    # The first ran at once and finished although it took longer than the timeout.
    assert isinstance(busy, ModelResponse)
    assert int(busy.outputs["COUNT"][0]) == BUSY_ITERATIONS
    assert isinstance(queued, DeadlineExceeded)
    assert queued.message == (
        "model 'timed' version 1: the request's deadline passed before it could run"
    )
    assert runner.counters.expired == 1


def test_earlier_request_deadline_wins_over_the_version_timeout(
    load: Loader, slow_path: Path
) -> None:
    runner = load(slow_path, "timedout", timeout_s=600.0)

    with pytest.raises(DeadlineExceeded):
        run(runner.infer(late_request(time.monotonic() - 1.0)))
    response = run(runner.infer(late_request(time.monotonic() + 600.0)))

    assert int(response.outputs["COUNT"][0]) == 3


def test_cache_answers_an_identical_request_without_running(load: Loader, mlp_path: Path) -> None:
    runner = load(mlp_path, "cached", cache=CacheSettings(1 << 20, 60.0))
    feed = {"INPUT0": rows(2, seed=21)}

    miss = run(runner.infer(ModelRequest(feed)))
    hit = run(runner.infer(ModelRequest({"INPUT0": feed["INPUT0"].copy()})))
    other = run(runner.infer(ModelRequest({"INPUT0": rows(2, seed=22)})))

    assert runner.has_cache is True
    assert miss.stats.cache_hit is False
    assert miss.stats.batch_rows == 2
    assert hit.stats == RunStats(2, 0.0, 0.0, 0, cache_hit=True)
    assert other.stats.cache_hit is False
    for name in ("OUTPUT0", "LABEL"):
        np.testing.assert_array_equal(hit.outputs[name], miss.outputs[name])
    expected = direct(mlp_path, feed)
    np.testing.assert_allclose(hit.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
    cache = runner.counters.cache
    assert (cache.hits, cache.misses, cache.entries) == (1, 2, 2)
    assert runner.counters.executions == 2


def test_cached_result_depends_on_the_requested_outputs(load: Loader, mlp_path: Path) -> None:
    runner = load(mlp_path, "cachedoutputs", cache=CacheSettings(1 << 20, 60.0))
    feed = {"INPUT0": rows(2, seed=23)}

    label = run(runner.infer(ModelRequest(feed, ("LABEL",))))
    both = run(runner.infer(ModelRequest(feed)))

    assert tuple(label.outputs) == ("LABEL",)
    assert tuple(both.outputs) == ("OUTPUT0", "LABEL")
    assert (label.stats.cache_hit, both.stats.cache_hit) == (False, False)


def test_without_a_cache_nothing_is_cached(load: Loader, mlp_path: Path) -> None:
    runner = load(mlp_path, "uncached")
    feed = {"INPUT0": rows(2, seed=24)}

    first = run(runner.infer(ModelRequest(feed)))
    second = run(runner.infer(ModelRequest(feed)))

    assert runner.has_cache is False
    assert (first.stats.cache_hit, second.stats.cache_hit) == (None, None)
    assert runner.counters.executions == 2
    assert (runner.counters.cache.hits, runner.counters.cache.misses) == (0, 0)


# -- loading options -----------------------------------------------------------------------------


def test_warm_up_failure_fails_the_load_and_stops_the_instances(
    load: Loader, tmp_path: Path
) -> None:
    path = write_model(fails_on_zeros_of_one_row(), tmp_path / "model.onnx")

    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail):
        load(path, "warm", instance_count=2)

    assert not any(name.startswith("ort-warm-") for name in thread_names())


def test_without_warm_up_the_same_model_loads_and_runs(load: Loader, tmp_path: Path) -> None:
    path = write_model(fails_on_zeros_of_one_row(), tmp_path / "model.onnx")
    runner = load(path, "cold", warmup=False)

    response = run(runner.infer(ModelRequest({"X": np.arange(4, dtype=np.float32)})))

    np.testing.assert_array_equal(response.outputs["Y"], [[0, 1], [2, 3]])


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(SessionSettings(), id="defaults"),
        pytest.param(SessionSettings(1, 1, "disabled", False), id="disabled"),
        pytest.param(SessionSettings(2, 2, "basic", True), id="basic-spinning"),
        pytest.param(SessionSettings(1, 1, "extended", False), id="extended"),
    ],
)
def test_session_settings_give_the_same_answers(
    load: Loader, mlp_path: Path, settings: SessionSettings
) -> None:
    runner = load(mlp_path, session=settings)
    feed = {"INPUT0": rows(4, seed=11)}

    response = run(runner.infer(ModelRequest(feed)))

    expected = direct(mlp_path, feed)
    np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
