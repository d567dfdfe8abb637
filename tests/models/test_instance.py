"""A worker instance (models/instance.py): runs with and without ONNX Runtime's I/O binding,
the staging buffers batches are gathered into, how the loader chooses the binding, and close().

Binding("cpu") is the CPU form of the path GPU instances take (outputs bound on the device,
then copied to the host), so it is checked here against plain session.run on real models.
"""

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.support.onnx_models import (
    ALL_TYPES,
    echo_strings,
    fixed_shape,
    identity_all_types,
    slow_counter,
    write_model,
)
from turnout.models import loader
from turnout.models.instance import Binding, OrtInstance, RunResult
from turnout.models.loader import InstanceGroup, IoBinding, VersionSpec, load_version
from turnout.models.providers import CPU, Device
from turnout.models.runner import ModelRunner
from turnout.models.types import ModelRequest, ModelResponse
from turnout.server.demo import build_mlp

Feed = dict[str, Any]
FEATURES = 4
WAIT_TIMEOUT_S = 10.0


def small_mlp() -> onnx.ModelProto:
    return build_mlp(1, features=FEATURES, hidden=8, classes=3)


def session_of(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=[CPU])


class Instances:
    """Creates instances and closes them when the test ends."""

    def __init__(self) -> None:
        self.made: list[OrtInstance] = []

    def __call__(
        self, model: onnx.ModelProto, binding: Binding | None = None, name: str = "ort-test"
    ) -> OrtInstance:
        instance = OrtInstance(session_of(model), name, binding)
        self.made.append(instance)
        return instance

    def close(self) -> None:
        for instance in self.made:
            instance.close()


@pytest.fixture
def instances() -> Iterator[Instances]:
    made = Instances()
    yield made
    made.close()


class Completions:
    """Collects what an instance's runs hand to their ``done`` callbacks (on its thread)."""

    def __init__(self) -> None:
        self.results: list[tuple[RunResult | None, BaseException | None]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def done(self, result: RunResult | None, error: BaseException | None) -> None:
        with self._changed:
            self.results.append((result, error))
            self._changed.notify_all()

    def wait(self, count: int) -> list[tuple[RunResult | None, BaseException | None]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.results) >= count, WAIT_TIMEOUT_S):
                raise AssertionError(f"timed out waiting for {count} runs to complete")
            return list(self.results)


def mlp_feed(rows: int = 3, seed: int = 0) -> Feed:
    rng = np.random.default_rng(seed)
    return {"INPUT0": rng.standard_normal((rows, FEATURES)).astype(np.float32)}


def all_types_feed() -> Feed:
    rng = np.random.default_rng(1)
    return {
        f"IN_{name}": (rng.integers(0, 100, (4, 3)) % (2 if name == "BOOL" else 100)).astype(dtype)
        for name, _, dtype in ALL_TYPES
    }


def strided_mlp_feed() -> Feed:
    wide = np.random.default_rng(2).standard_normal((3, 3 * FEATURES)).astype(np.float32)
    return {"INPUT0": wide[:, ::3]}


# -- I/O binding on the CPU ----------------------------------------------------------------------

# ONNX Runtime binds only numeric tensors (strings raise "Only binding non-string Tensors is
# currently supported"), so string models are never given a binding: see the loader tests below.
BOUND_CASES = [
    pytest.param(small_mlp, mlp_feed, ["OUTPUT0", "LABEL"], id="mlp"),
    pytest.param(small_mlp, lambda: mlp_feed(1, seed=5), ["LABEL"], id="mlp-one-output"),
    pytest.param(small_mlp, mlp_feed, ["LABEL", "OUTPUT0"], id="mlp-outputs-reordered"),
    pytest.param(small_mlp, strided_mlp_feed, ["OUTPUT0", "LABEL"], id="mlp-strided-input"),
    pytest.param(
        identity_all_types,
        all_types_feed,
        [f"OUT_{name}" for name, _, _ in ALL_TYPES],
        id="every-numeric-type",
    ),
    pytest.param(
        fixed_shape, lambda: {"X": np.full((2, 3), 0.25, np.float32)}, ["Y"], id="fixed-shape"
    ),
    pytest.param(
        slow_counter, lambda: {"ITERATIONS": np.array([17], np.int64)}, ["COUNT"], id="loop"
    ),
]


@pytest.mark.parametrize(("build", "make_feed", "names"), BOUND_CASES)
def test_bound_runs_equal_plain_session_run(
    instances: Instances,
    build: Callable[[], onnx.ModelProto],
    make_feed: Callable[[], Feed],
    names: list[str],
) -> None:
    instance = instances(build(), Binding("cpu"))
    feed = make_feed()
    expected = instance.session.run(names, feed)

    now = instance.run_now(feed, names)
    completions = Completions()
    instance.submit(feed, names, completions.done)
    ((submitted, error),) = completions.wait(1)

    assert error is None
    assert submitted is not None
    threaded, seconds = submitted
    assert seconds >= 0
    for got in (now, threaded):
        assert len(got) == len(expected)
        for array, want in zip(got, expected, strict=True):
            assert isinstance(array, np.ndarray)
            assert array.dtype == want.dtype
            assert array.shape == want.shape
            np.testing.assert_array_equal(array, want)


def test_unbound_instance_runs_plain_session_run(instances: Instances) -> None:
    instance = instances(small_mlp())
    feed = mlp_feed()

    got = instance.run_now(feed, ["OUTPUT0", "LABEL"])

    assert instance.binding is None
    for array, want in zip(got, instance.session.run(["OUTPUT0", "LABEL"], feed), strict=True):
        np.testing.assert_array_equal(array, want)


@pytest.mark.parametrize(
    "binding", [pytest.param(None, id="plain"), pytest.param(Binding("cpu"), id="bound")]
)
def test_a_failed_run_is_reported_and_the_instance_goes_on(
    instances: Instances, binding: Binding | None
) -> None:
    instance = instances(small_mlp(), binding)
    completions = Completions()

    instance.submit({"INPUT0": np.zeros((2, FEATURES), np.float64)}, ["LABEL"], completions.done)
    instance.submit(mlp_feed(2), ["LABEL"], completions.done)
    (failed, error), (succeeded, no_error) = completions.wait(2)

    assert failed is None
    assert isinstance(error, Exception)
    assert "double" in str(error)  # ONNX Runtime names the unexpected input type
    assert no_error is None
    assert succeeded is not None
    np.testing.assert_array_equal(succeeded[0][0], instance.session.run(["LABEL"], mlp_feed(2))[0])


# -- staging buffers -----------------------------------------------------------------------------


def address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def test_staging_reuses_its_buffer_for_the_same_shape(instances: Instances) -> None:
    instance = instances(small_mlp())
    like = np.zeros((1, FEATURES), np.float32)

    first = instance.staging("INPUT0", like, 4)
    first[...] = 1.0
    second = instance.staging("INPUT0", like, 4)
    fewer = instance.staging("INPUT0", like, 2)

    assert first.shape == second.shape == (4, FEATURES)
    assert first.dtype == np.float32
    assert address(second) == address(first)
    assert fewer.shape == (2, FEATURES)
    assert address(fewer) == address(first)
    np.testing.assert_array_equal(second, 1.0)  # the very same memory


def test_staging_grows_when_more_rows_are_needed(instances: Instances) -> None:
    instance = instances(small_mlp())
    like = np.zeros((1, FEATURES), np.float32)
    small = instance.staging("INPUT0", like, 2)

    grown = instance.staging("INPUT0", like, 7)
    again = instance.staging("INPUT0", like, 7)
    smaller = instance.staging("INPUT0", like, 3)

    assert grown.shape == (7, FEATURES)
    assert not np.shares_memory(grown, small)
    assert address(again) == address(grown)
    assert address(smaller) == address(grown)
    # Asked for 7 rows after 2: the buffer may hold more, but a view of exactly 7 is given.
    assert grown.base is not None
    assert grown.base.shape[0] >= 7


@pytest.mark.parametrize(
    ("first_like", "then_like", "then_name"),
    [
        pytest.param(
            np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float64), "X", id="new-dtype"
        ),
        pytest.param(
            np.zeros((1, 4), np.float32), np.zeros((1, 5), np.float32), "X", id="new-width"
        ),
        pytest.param(
            np.zeros((1, 4), np.float32), np.zeros((1, 2, 2), np.float32), "X", id="new-rank"
        ),
        pytest.param(
            np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), "Z", id="other-input"
        ),
    ],
)
def test_staging_gives_a_new_buffer_for_a_new_dtype_or_shape(
    instances: Instances, first_like: np.ndarray, then_like: np.ndarray, then_name: str
) -> None:
    instance = instances(small_mlp())
    first = instance.staging("X", first_like, 4)

    then = instance.staging(then_name, then_like, 4)

    assert then.dtype == then_like.dtype
    assert then.shape == (4, *then_like.shape[1:])
    assert not np.shares_memory(then, first)
    if then_name == "Z":  # each input keeps its own buffer
        assert address(instance.staging("X", first_like, 4)) == address(first)


def test_staging_holds_what_a_batch_is_gathered_into(instances: Instances) -> None:
    instance = instances(small_mlp(), Binding("cpu"))
    parts = [mlp_feed(rows, seed=rows)["INPUT0"] for rows in (1, 2, 3)]

    gathered = np.concatenate(parts, out=instance.staging("INPUT0", parts[0], 6))
    (probabilities,) = instance.run_now({"INPUT0": gathered}, ["OUTPUT0"])

    expected = instance.session.run(["OUTPUT0"], {"INPUT0": np.concatenate(parts)})[0]
    np.testing.assert_array_equal(probabilities, expected)


# -- the loader's choice of binding --------------------------------------------------------------


class Created:
    """Records the instances the loader creates."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.instances: list[OrtInstance] = []
        created = self.instances

        class Recording(OrtInstance):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                created.append(self)

        monkeypatch.setattr(loader, "OrtInstance", Recording)


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> Created:
    return Created(monkeypatch)


def load_on_cpu(path: Path, count: int, **options: Any) -> ModelRunner:
    groups = (InstanceGroup(Device("cpu"), count),)
    return load_version(VersionSpec("bound", "1", path, instance_groups=groups, **options))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param("on", Binding("cpu"), id="on"),
        pytest.param("auto", None, id="auto"),
        pytest.param("off", None, id="off"),
    ],
)
def test_loader_binds_cpu_instances_only_when_asked(
    created: Created, tmp_path: Path, mode: IoBinding, expected: Binding | None
) -> None:
    path = write_model(small_mlp(), tmp_path / "mlp.onnx")
    feeds = [mlp_feed(rows, seed=10 + i) for i, rows in enumerate((1, 3, 2, 4, 1))]
    runner = load_on_cpu(path, 2, io_binding=mode, max_batch_size=8)
    try:

        async def all_at_once() -> list[ModelResponse]:
            return await asyncio.gather(*(runner.infer(ModelRequest(feed)) for feed in feeds))

        responses = asyncio.run(all_at_once())
    finally:
        runner.close()

    assert len(created.instances) == 2
    assert [instance.binding for instance in created.instances] == [expected, expected]
    direct = session_of(small_mlp())
    for feed, response in zip(feeds, responses, strict=True):
        probabilities, labels = direct.run(["OUTPUT0", "LABEL"], feed)
        np.testing.assert_allclose(response.outputs["OUTPUT0"], probabilities, rtol=1e-5)
        np.testing.assert_array_equal(response.outputs["LABEL"], labels)


def test_loader_with_binding_on_serves_a_string_model(tmp_path: Path) -> None:
    """ONNX Runtime cannot bind string tensors: the version must still load and answer."""
    path = write_model(echo_strings(), tmp_path / "strings.onnx")
    runner = load_on_cpu(path, 1, io_binding="on")
    try:
        text = np.array([b"hello", "w\u00f6rld".encode()], dtype=object)
        response = asyncio.run(runner.infer(ModelRequest({"TEXT": text})))
    finally:
        runner.close()

    assert response.outputs["ECHO"].tolist() == ["hello", "w\u00f6rld"]


# -- close ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "binding", [pytest.param(None, id="plain"), pytest.param(Binding("cpu"), id="bound")]
)
def test_close_finishes_the_queued_runs(binding: Binding | None) -> None:
    """Each run takes some milliseconds, so when close() is called right after submitting, the
    later runs are still queued; close() must run them all before the thread stops."""
    instance = OrtInstance(session_of(slow_counter()), "ort-closing-1-0", binding)
    completions = Completions()
    counts = [20_000 + step for step in range(4)]

    for count in counts:
        instance.submit({"ITERATIONS": np.array([count], np.int64)}, ["COUNT"], completions.done)
    instance.close()

    results = list(completions.results)  # no waiting: close() returned after every run
    assert len(results) == len(counts)
    for (result, error), count in zip(results, counts, strict=True):
        assert error is None
        assert result is not None
        assert int(result[0][0][0]) == count
    assert "ort-closing-1-0" not in {thread.name for thread in threading.enumerate()}
