"""The dynamic batcher (models/scheduler.py), mostly through ModelRunner.infer, on real ONNX models
run on the CPU.

Batches are made deterministic by holding the only instance busy: its session is a real ONNX
Runtime session behind a gate the test shuts, so that a first request (the "blocker") stays
running while the test fills the queue, and the test opens the gate once the queue holds what it
wants. Every run the session is given is recorded, so tests observe exactly which rows ran
together. Waits poll observable state against a deadline; nothing sleeps and hopes.
"""

import asyncio
import threading
import time
from collections import Counter
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
    write_model,
)
from turnout.errors import DeadlineExceeded, InvalidInput, Overloaded
from turnout.models.accounting import VersionCounters
from turnout.models.cache import CacheSettings
from turnout.models.instance import OrtInstance
from turnout.models.loader import InstanceGroup, VersionSpec, load_version
from turnout.models.providers import CPU, Device
from turnout.models.runner import ModelRunner
from turnout.models.scheduler import BatchPolicy, ScheduledResult, Scheduler
from turnout.models.session import read_signature
from turnout.models.types import ModelRequest, ModelResponse, PlacedGroup, Placement
from turnout.server.demo import build_mlp, finish_model

T = TypeVar("T")
Feed = dict[str, np.ndarray]
Outcome = ModelResponse | BaseException

FEATURES = 4
CLASSES = 3
WIDTH = 3
GATE_TIMEOUT_S = 20.0
WAIT_TIMEOUT_S = 10.0
POLL_S = 0.001


# -- models --------------------------------------------------------------------------------------


def small_mlp() -> onnx.ModelProto:
    """``INPUT0`` [batch, 4] FP32 → ``OUTPUT0`` [batch, 3] FP32 and ``LABEL`` [batch] INT64."""
    return build_mlp(1, features=FEATURES, hidden=8, classes=CLASSES)


def plus_one_any_width() -> onnx.ModelProto:
    """``X`` [batch, width] FP32 plus one is ``Y``: the second dimension varies per request."""
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "one"], ["Y"])],
        "plus_one",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "width"])],
        [one],
    )
    return finish_model(graph)


def identity_fp32() -> onnx.ModelProto:
    """``X`` [batch, 3] FP32 echoed as ``Y``."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])],
        "identity",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", WIDTH])],
    )
    return finish_model(graph)


TABLE = np.arange(5 * WIDTH, dtype=np.float32).reshape(5, WIDTH)


def gather_table() -> onnx.ModelProto:
    """``IDX`` [batch] INT64 picks rows of a 5-row table into ``ROWS`` [batch, 3]; an index
    outside -5..4 makes ONNX Runtime refuse the run (INVALID_ARGUMENT)."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "IDX"], ["ROWS"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("IDX", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("ROWS", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(TABLE, "table")],
    )
    return finish_model(graph)


def sum_over_batch() -> onnx.ModelProto:
    """``X`` [batch, 3] summed over the batch axis with keepdims: ``S`` is declared
    [batch, 3] but always has one row, whatever the batch. The axis is computed at run time
    (width - 3 = 0) so that shape inference cannot replace the declared shape with [1, 3]."""
    three = numpy_helper.from_array(np.array([WIDTH], dtype=np.int64), "three")
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["X"], ["width"], start=1),
            helper.make_node("Sub", ["width", "three"], ["axes"]),
            helper.make_node("ReduceSum", ["X", "axes"], ["S"], keepdims=1),
        ],
        "sum_over_batch",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("S", TensorProto.FLOAT, ["batch", WIDTH])],
        [three],
    )
    return finish_model(graph)


# -- a gated, recording session and the runners built on it ------------------------------------


class GatedSession:
    """A real ONNX Runtime session that waits while its gate is shut and records every run it
    is given: a copy of the feed and the name of the thread that ran it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
        self.gate = threading.Event()
        self.gate.set()
        self.feeds: list[Feed] = []
        self.threads: list[str] = []
        self._lock = threading.Lock()

    def run(
        self, output_names: list[str], feed: Feed, options: ort.RunOptions | None = None
    ) -> list[np.ndarray]:
        with self._lock:
            self.feeds.append({name: np.array(array, copy=True) for name, array in feed.items()})
            self.threads.append(threading.current_thread().name)
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the test never opened the gate")
        return list(self.session.run(output_names, feed, options))

    @property
    def rows(self) -> list[int]:
        """The rows of each run so far (the first dimension of its first input)."""
        with self._lock:
            return [int(next(iter(feed.values())).shape[0]) for feed in self.feeds]

    @property
    def started(self) -> int:
        with self._lock:
            return len(self.feeds)


class Fleet:
    """Builds runners on gated sessions (or through load_version) and closes them afterwards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sessions: list[GatedSession] = []
        self.runners: list[ModelRunner] = []
        self.instances: list[OrtInstance] = []

    def gated(
        self,
        model: onnx.ModelProto,
        policy: BatchPolicy,
        *,
        instances: int = 1,
        max_batch_size: int | None = None,
        cache: CacheSettings | None = None,
        timeout_s: float | None = None,
        name: str = "model",
    ) -> tuple[ModelRunner, list[GatedSession]]:
        """A runner on ``instances`` gated sessions; the signature's max_batch_size is the
        policy's unless given (dynamic batching off: policy 0, signature > 0)."""
        sessions = [GatedSession(model) for _ in range(instances)]
        workers = [OrtInstance(s, f"ort-{name}-1-{i}") for i, s in enumerate(sessions)]
        self.sessions += sessions
        signature = read_signature(
            sessions[0].session,
            name,
            "1",
            policy.max_batch_size if max_batch_size is None else max_batch_size,
        )
        placement = Placement((PlacedGroup("cpu", 0, instances, (CPU,)),))
        runner = ModelRunner(signature, placement, workers, policy, cache, timeout_s)
        self.runners.append(runner)
        return runner, sessions

    def scheduler(
        self, model: onnx.ModelProto, policy: BatchPolicy, name: str = "model"
    ) -> tuple[Scheduler, GatedSession, VersionCounters]:
        """A bare scheduler on one gated instance."""
        session = GatedSession(model)
        self.sessions.append(session)
        instance = OrtInstance(session, f"ort-{name}-1-0")
        self.instances.append(instance)
        counters = VersionCounters()
        inputs = tuple(arg.name for arg in session.session.get_inputs())
        outputs = tuple(arg.name for arg in session.session.get_outputs())
        label = f"model {name!r} version 1"
        return Scheduler(label, [instance], policy, inputs, outputs, counters), session, counters

    def load(self, model: onnx.ModelProto, count: int = 1, **options: Any) -> ModelRunner:
        """A version loaded by load_version on ``count`` CPU instances."""
        path = write_model(model, self.directory / f"model{len(self.runners)}.onnx")
        groups = (InstanceGroup(Device("cpu"), count),)
        runner = load_version(VersionSpec("model", "1", path, instance_groups=groups, **options))
        self.runners.append(runner)
        return runner

    def close(self) -> None:
        for session in self.sessions:
            session.gate.set()
        for runner in self.runners:
            runner.close()
        for instance in self.instances:
            instance.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    built = Fleet(tmp_path)
    yield built
    built.close()


# -- helpers -------------------------------------------------------------------------------------


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def mlp_rows(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)


def mlp_request(count: int, seed: int) -> ModelRequest:
    return ModelRequest({"INPUT0": mlp_rows(count, seed)})


async def until(probe: Callable[[], bool], what: str) -> None:
    """Yield to the event loop until ``probe()`` holds; fail after WAIT_TIMEOUT_S."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_TIMEOUT_S} s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def hold(
    runner: ModelRunner, session: GatedSession, blocker: ModelRequest
) -> "asyncio.Task[ModelResponse]":
    """Shut the gate and start ``blocker``, which then occupies the only instance."""
    session.gate.clear()
    before = session.started
    task = asyncio.create_task(runner.infer(blocker))
    await until(lambda: session.started == before + 1, "the blocker to start running")
    return task


async def enqueue(
    runner: ModelRunner, requests: list[ModelRequest]
) -> "list[asyncio.Task[ModelResponse]]":
    """Submit ``requests`` and wait until all of them are queued."""
    before = runner.counters.queued
    tasks = [asyncio.create_task(runner.infer(request)) for request in requests]
    await until(lambda: runner.counters.queued == before + len(requests), "requests to queue")
    return tasks


def executions_by_size(runner: ModelRunner) -> dict[int, int]:
    return {size: times.executions for size, times in runner.counters.by_batch_size.items()}


def reference(session: GatedSession, feed: Feed) -> dict[str, np.ndarray]:
    """What ONNX Runtime gives for ``feed`` run alone."""
    names = [arg.name for arg in session.session.get_outputs()]
    return dict(zip(names, session.session.run(names, feed), strict=True))


def assert_mlp_answer(session: GatedSession, feed: Feed, response: Outcome) -> None:
    assert isinstance(response, ModelResponse), response
    expected = reference(session, feed)
    np.testing.assert_allclose(response.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
    np.testing.assert_array_equal(response.outputs["LABEL"], expected["LABEL"])
    assert response.stats.rows == feed["INPUT0"].shape[0]


# -- every caller gets its own rows --------------------------------------------------------------


@pytest.mark.parametrize("instances", [pytest.param(1, id="1-instance"), pytest.param(2, id="2")])
def test_concurrent_mixed_requests_each_get_exactly_their_own_rows(
    fleet: Fleet, instances: int
) -> None:
    """All requests are submitted in one event-loop turn, so they queue while the first runs
    (a completion reaches the loop at the earliest one turn later) and batches must form."""
    runner = fleet.load(small_mlp(), count=instances, max_batch_size=8)
    rng = np.random.default_rng(2024)
    feeds = [
        {"INPUT0": rng.standard_normal((int(rng.integers(1, 6)), FEATURES)).astype(np.float32)}
        for _ in range(40)
    ]

    async def all_at_once() -> list[ModelResponse]:
        return await asyncio.gather(*(runner.infer(ModelRequest(feed)) for feed in feeds))

    responses = run(all_at_once())

    direct = ort.InferenceSession(small_mlp().SerializeToString(), providers=[CPU])
    for feed, response in zip(feeds, responses, strict=True):
        probabilities, labels = direct.run(["OUTPUT0", "LABEL"], feed)
        assert response.outputs["OUTPUT0"].shape == probabilities.shape
        np.testing.assert_allclose(response.outputs["OUTPUT0"], probabilities, rtol=1e-5)
        np.testing.assert_array_equal(response.outputs["LABEL"], labels)
        assert response.stats.rows == feed["INPUT0"].shape[0]
        assert response.stats.rows <= response.stats.batch_rows <= 8
    by_size = executions_by_size(runner)
    total_rows = sum(feed["INPUT0"].shape[0] for feed in feeds)
    assert sum(size * count for size, count in by_size.items()) == total_rows
    assert max(by_size) <= 8
    assert runner.counters.executions < len(feeds)  # some runs served several requests
    assert any(r.stats.batch_rows > r.stats.rows for r in responses)
    assert runner.counters.queued == 0


BATCHES = [
    pytest.param([3, 4, 1, 2, 5], [8, 7], id="oldest-first-up-to-max"),
    pytest.param([5, 4], [5, 4], id="rows-count-not-requests"),
    pytest.param([8, 1], [8, 1], id="a-full-request-runs-alone"),
    pytest.param([1] * 10, [8, 2], id="ten-single-rows"),
    pytest.param([2, 2, 2], [6], id="all-fit"),
]


@pytest.mark.parametrize(("queued_rows", "expected_runs"), BATCHES)
def test_batches_count_rows_and_never_exceed_max_batch_size(
    fleet: Fleet, queued_rows: list[int], expected_runs: list[int]
) -> None:
    runner, (session,) = fleet.gated(small_mlp(), BatchPolicy(max_batch_size=8))
    requests = [mlp_request(rows, seed=10 + i) for i, rows in enumerate(queued_rows)]

    async def scenario() -> tuple[ModelResponse, list[ModelResponse]]:
        blocker = await hold(runner, session, mlp_request(1, seed=1))
        tasks = await enqueue(runner, requests)
        session.gate.set()
        return await blocker, await asyncio.gather(*tasks)

    blocker, responses = run(scenario())

    assert session.rows == [1, *expected_runs]
    assert executions_by_size(runner) == Counter([1, *expected_runs])
    assert blocker.stats.batch_rows == 1
    for request, response in zip(requests, responses, strict=True):
        assert_mlp_answer(session, request.inputs, response)
        assert response.stats.batch_rows in expected_runs
    assert sum(session.rows[1:]) == sum(queued_rows)


def test_outputs_survive_the_next_batch_on_the_same_instance(fleet: Fleet) -> None:
    """An identity model's outputs must be the callers' own, not views of the staging buffer
    the instance gathers the next batch into."""
    runner, (session,) = fleet.gated(identity_all_types(), BatchPolicy(max_batch_size=8))
    rng = np.random.default_rng(5)

    def request() -> ModelRequest:
        return ModelRequest(
            {
                f"IN_{name}": (
                    rng.integers(0, 100, (1, 3)) % (2 if name == "BOOL" else 100)
                ).astype(dtype)
                for name, _, dtype in ALL_TYPES
            }
        )

    first_round = [request() for _ in range(3)]
    second_round = [request() for _ in range(3)]

    async def round_of(requests: list[ModelRequest]) -> list[ModelResponse]:
        blocker = await hold(runner, session, request())
        tasks = await enqueue(runner, requests)
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks)

    async def scenario() -> list[ModelResponse]:
        kept = await round_of(first_round)
        await round_of(second_round)
        return kept

    kept = run(scenario())

    assert session.rows == [1, 3, 1, 3]
    for req, response in zip(first_round, kept, strict=True):
        for name, _, dtype in ALL_TYPES:
            output = response.outputs[f"OUT_{name}"]
            assert output.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(output, req.inputs[f"IN_{name}"])


def test_each_member_gets_only_the_outputs_it_asked_for(fleet: Fleet) -> None:
    runner, (session,) = fleet.gated(small_mlp(), BatchPolicy(max_batch_size=8))
    asked: list[tuple[str, ...] | None] = [("LABEL",), ("OUTPUT0",), None, ("LABEL", "OUTPUT0")]
    requests = [
        ModelRequest({"INPUT0": mlp_rows(2, seed=40 + i)}, wanted) for i, wanted in enumerate(asked)
    ]

    async def scenario() -> list[ModelResponse]:
        blocker = await hold(runner, session, mlp_request(1, seed=1))
        tasks = await enqueue(runner, requests)
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks)

    responses = run(scenario())

    assert session.rows == [1, 8]
    for request, wanted, response in zip(requests, asked, responses, strict=True):
        assert tuple(response.outputs) == (wanted or ("OUTPUT0", "LABEL"))
        expected = reference(session, request.inputs)
        for name, array in response.outputs.items():
            np.testing.assert_allclose(array, expected[name], rtol=1e-5)


def test_string_requests_batch_and_each_get_their_own_elements(fleet: Fleet) -> None:
    runner, (session,) = fleet.gated(echo_strings(), BatchPolicy(max_batch_size=8))
    elements = [[b"one"], [b"two", "dr\u00ee".encode()], [b"", b"four", b"five"]]

    async def scenario() -> list[ModelResponse]:
        blocker = await hold(runner, session, ModelRequest({"TEXT": np.array([b"x"], object)}))
        tasks = await enqueue(
            runner, [ModelRequest({"TEXT": np.array(text, dtype=object)}) for text in elements]
        )
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks)

    responses = run(scenario())

    assert session.rows == [1, 6]
    for text, response in zip(elements, responses, strict=True):
        assert [element.encode() for element in response.outputs["ECHO"].tolist()] == text


# -- what may share a run ------------------------------------------------------------------------


def test_requests_whose_other_dimensions_differ_never_share_a_run(fleet: Fleet) -> None:
    runner, (session,) = fleet.gated(plus_one_any_width(), BatchPolicy(max_batch_size=8))
    shapes = [(1, 2), (1, 3), (2, 2), (1, 3), (2, 3)]
    rng = np.random.default_rng(3)
    requests = [
        ModelRequest({"X": rng.standard_normal(shape).astype(np.float32)}) for shape in shapes
    ]

    async def scenario() -> list[ModelResponse]:
        blocker = await hold(runner, session, ModelRequest({"X": np.zeros((1, 2), np.float32)}))
        tasks = await enqueue(runner, requests)
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks)

    responses = run(scenario())

    assert [feed["X"].shape for feed in session.feeds] == [(1, 2), (3, 2), (4, 3)]
    for request, response in zip(requests, responses, strict=True):
        np.testing.assert_array_equal(response.outputs["Y"], request.inputs["X"] + 1)


def test_requests_of_different_datatypes_never_share_a_run(fleet: Fleet) -> None:
    """Straight to the scheduler (validation would refuse FP64 for an FP32 input): had the FP64
    request joined the FP32 batch, the staging buffer would have quietly cast it and it would
    have succeeded; alone, ONNX Runtime refuses it."""
    scheduler, session, counters = fleet.scheduler(
        identity_fp32(), BatchPolicy(max_batch_size=8), name="dtypes"
    )
    a = np.full((1, WIDTH), 1.5, dtype=np.float32)
    b = np.full((1, WIDTH), 2.5, dtype=np.float64)
    c = np.full((1, WIDTH), 3.5, dtype=np.float32)

    async def scenario() -> list[ScheduledResult | BaseException]:
        session.gate.clear()
        blocker = asyncio.create_task(
            scheduler.submit({"X": np.zeros((1, WIDTH), np.float32)}, 1, ("Y",), None)
        )
        await until(lambda: session.started == 1, "the blocker to start running")
        tasks = [
            asyncio.create_task(scheduler.submit({"X": x}, 1, ("Y",), None)) for x in (a, b, c)
        ]
        await until(lambda: counters.queued == 3, "requests to queue")
        session.gate.set()
        return await asyncio.gather(blocker, *tasks, return_exceptions=True)

    _, got_a, got_b, got_c = run(scenario())

    assert [(feed["X"].dtype.name, feed["X"].shape[0]) for feed in session.feeds] == [
        ("float32", 1),
        ("float32", 2),
        ("float64", 1),
    ]
    assert isinstance(got_b, InvalidInput)
    assert got_b.message == "model 'dtypes' version 1 could not run on this input"
    for got, x in ((got_a, a), (got_c, c)):
        assert not isinstance(got, BaseException), got
        outputs, stats = got
        np.testing.assert_array_equal(outputs["Y"], x)
        assert stats.batch_rows == 2


def test_big_endian_and_native_requests_share_a_run(fleet: Fleet) -> None:
    """Both are FP32 (validation takes either byte order) and reach ONNX Runtime native."""
    runner, (session,) = fleet.gated(small_mlp(), BatchPolicy(max_batch_size=8))
    native = mlp_rows(2, seed=50)
    swapped = mlp_rows(3, seed=51)

    async def scenario() -> list[ModelResponse]:
        blocker = await hold(runner, session, mlp_request(1, seed=1))
        tasks = await enqueue(
            runner,
            [ModelRequest({"INPUT0": native}), ModelRequest({"INPUT0": swapped.astype(">f4")})],
        )
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks)

    got_native, got_swapped = run(scenario())

    assert session.rows == [1, 5]
    assert_mlp_answer(session, {"INPUT0": native}, got_native)
    assert_mlp_answer(session, {"INPUT0": swapped}, got_swapped)


# -- preferred sizes and the queue delay --------------------------------------------------------


@pytest.mark.parametrize(
    ("preferred", "expected_runs"),
    [
        pytest.param((4,), [4, 3], id="cut-to-4"),
        pytest.param((2, 4), [4, 2, 1], id="largest-preferred-first"),
        pytest.param((8,), [7], id="unreachable-preferred-takes-all"),
    ],
)
def test_preferred_batch_sizes(
    fleet: Fleet, preferred: tuple[int, ...], expected_runs: list[int]
) -> None:
    policy = BatchPolicy(max_batch_size=8, preferred_batch_sizes=preferred)
    runner, (session,) = fleet.gated(small_mlp(), policy)
    requests = [mlp_request(1, seed=60 + i) for i in range(7)]

    async def scenario() -> list[ModelResponse]:
        blocker = await hold(runner, session, mlp_request(1, seed=1))
        tasks = await enqueue(runner, requests)
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks)

    responses = run(scenario())

    assert session.rows == [1, *expected_runs]
    for request, response in zip(requests, responses, strict=True):
        assert_mlp_answer(session, request.inputs, response)


def test_queue_delay_holds_a_lone_request_until_it_passes(fleet: Fleet) -> None:
    delay = 0.02
    runner, (session,) = fleet.gated(
        small_mlp(), BatchPolicy(max_batch_size=8, max_queue_delay_s=delay)
    )
    request = mlp_request(1, seed=70)

    async def scenario() -> tuple[int, int, ModelResponse]:
        task = asyncio.create_task(runner.infer(request))
        await asyncio.sleep(0)  # the task has queued; timers fire no earlier than next turn
        queued, started = runner.counters.queued, session.started
        return queued, started, await task

    queued, started, response = run(scenario())

    assert (queued, started) == (1, 0)  # the instance was idle, yet the request waited
    assert_mlp_answer(session, request.inputs, response)
    assert response.stats.queue_seconds >= delay
    assert executions_by_size(runner) == {1: 1}


@pytest.mark.parametrize(
    ("policy", "rows"),
    [
        pytest.param(BatchPolicy(max_batch_size=4, max_queue_delay_s=60.0), [1, 2], id="max"),
        pytest.param(
            BatchPolicy(max_batch_size=8, max_queue_delay_s=60.0, preferred_batch_sizes=(3,)),
            [1, 1],
            id="preferred",
        ),
    ],
)
def test_queue_delay_ends_as_soon_as_the_batch_fills(
    fleet: Fleet, policy: BatchPolicy, rows: list[int]
) -> None:
    runner, (session,) = fleet.gated(small_mlp(), policy)
    first = mlp_request(1, seed=80)
    later = [mlp_request(count, seed=81 + i) for i, count in enumerate(rows)]

    async def scenario() -> tuple[int, list[ModelResponse]]:
        head = asyncio.create_task(runner.infer(first))
        await until(lambda: runner.counters.queued == 1, "the first request to queue")
        await asyncio.sleep(0)
        started_alone = session.started
        tasks = [asyncio.create_task(runner.infer(request)) for request in later]
        # Far less than the 60 s delay: the batch ran because it filled.
        responses = await asyncio.wait_for(asyncio.gather(head, *tasks), WAIT_TIMEOUT_S)
        return started_alone, responses

    started_alone, responses = run(scenario())

    assert started_alone == 0
    assert session.rows == [1 + sum(rows)]
    for request, response in zip([first, *later], responses, strict=True):
        assert_mlp_answer(session, request.inputs, response)
        assert response.stats.batch_rows == 1 + sum(rows)


# -- no batching ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "signature_batch", "make"),
    [
        pytest.param(
            small_mlp,
            8,
            lambda i: mlp_request([2, 1, 3, 1][i], seed=90 + i),
            id="dynamic-batching-off",
        ),
        pytest.param(
            small_mlp, 0, lambda i: mlp_request([2, 1, 3, 1][i], seed=90 + i), id="max-batch-0"
        ),
        pytest.param(
            fixed_shape,
            0,
            lambda i: ModelRequest({"X": np.full((2, 3), float(i), np.float32)}),
            id="no-batch-dimension",
        ),
    ],
)
def test_without_batching_each_request_runs_alone(
    fleet: Fleet,
    build: Callable[[], onnx.ModelProto],
    signature_batch: int,
    make: Callable[[int], ModelRequest],
) -> None:
    runner, (session,) = fleet.gated(
        build(), BatchPolicy(max_batch_size=0), max_batch_size=signature_batch
    )
    requests = [make(i) for i in range(4)]

    async def scenario() -> list[ModelResponse]:
        blocker = await hold(runner, session, make(0))
        tasks = await enqueue(runner, requests)
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks)

    responses = run(scenario())

    assert session.started == 5
    for request, feed, response in zip(requests, session.feeds[1:], responses, strict=True):
        for name, array in request.inputs.items():
            np.testing.assert_array_equal(feed[name], array)  # ran alone, in order
        expected = reference(session, request.inputs)
        for name, array in response.outputs.items():
            np.testing.assert_allclose(array, expected[name], rtol=1e-5)
        assert response.stats.batch_rows == response.stats.rows
    assert runner.counters.executions == 5


@pytest.mark.parametrize(
    ("options", "policy_batch", "signature_batch"),
    [
        pytest.param({"max_batch_size": 8, "dynamic_batching": False}, 0, 8, id="batching-off"),
        pytest.param({"max_batch_size": 0}, 0, 0, id="max-batch-0"),
        pytest.param({"max_batch_size": 8}, 8, 8, id="batching-on"),
    ],
)
def test_loader_turns_batching_settings_into_the_policy(
    fleet: Fleet, options: dict[str, Any], policy_batch: int, signature_batch: int
) -> None:
    runner = fleet.load(small_mlp(), **options)
    feeds = [{"INPUT0": mlp_rows(rows, seed=100 + rows)} for rows in (1, 2, 3, 1, 2)]

    async def all_at_once() -> list[ModelResponse]:
        return await asyncio.gather(*(runner.infer(ModelRequest(feed)) for feed in feeds))

    responses = run(all_at_once())

    assert runner.policy.max_batch_size == policy_batch
    assert runner.signature.max_batch_size == signature_batch
    if policy_batch == 0:
        assert all(r.stats.batch_rows == r.stats.rows for r in responses)
        assert runner.counters.executions == len(feeds)
    else:
        # Submitted in one loop turn: the first runs alone, the other four share a run.
        assert executions_by_size(runner) == {1: 1, 8: 1}


# -- a full queue --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "extra"),
    [pytest.param(3, 2, id="3+2"), pytest.param(1, 1, id="1+1"), pytest.param(4, 4, id="4+4")],
)
def test_full_queue_refuses_the_excess_at_once(fleet: Fleet, size: int, extra: int) -> None:
    runner, (session,) = fleet.gated(
        small_mlp(), BatchPolicy(max_batch_size=8, max_queue_size=size), name="full"
    )
    requests = [mlp_request(1, seed=110 + i) for i in range(size + extra)]

    async def scenario() -> tuple[list[bool], list[Outcome]]:
        blocker = await hold(runner, session, mlp_request(1, seed=1))
        tasks = [asyncio.create_task(runner.infer(request)) for request in requests]
        await until(
            lambda: runner.counters.queued == size and sum(t.done() for t in tasks) == extra,
            "the queue to fill and the excess to be refused",
        )
        done_while_busy = [task.done() for task in tasks]
        session.gate.set()
        await blocker
        return done_while_busy, await asyncio.gather(*tasks, return_exceptions=True)

    done_while_busy, outcomes = run(scenario())

    assert done_while_busy == [False] * size + [True] * extra
    for outcome in outcomes[size:]:
        assert isinstance(outcome, Overloaded)
        assert outcome.message == (
            f"model 'full' version 1: the queue is full ({size} requests waiting); retry later"
        )
    for request, outcome in zip(requests[:size], outcomes[:size], strict=True):
        assert_mlp_answer(session, request.inputs, outcome)
    assert runner.counters.rejected == extra
    assert runner.counters.queued == 0
    assert sum(session.rows) == 1 + size  # the refused requests never ran


# -- deadlines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["request-deadline", "version-timeout"])
def test_deadline_passing_in_the_queue_fails_without_running(fleet: Fleet, source: str) -> None:
    budget = 0.02
    runner, (session,) = fleet.gated(
        small_mlp(),
        BatchPolicy(max_batch_size=8),
        timeout_s=budget if source == "version-timeout" else None,
        name="late",
    )
    late_rows = np.full((1, FEATURES), 7.25, dtype=np.float32)

    async def scenario() -> tuple[bool, BaseException | None, ModelResponse, ModelResponse]:
        blocker = await hold(runner, session, mlp_request(1, seed=1))
        deadline = time.monotonic() + budget if source == "request-deadline" else None
        late = asyncio.create_task(
            runner.infer(ModelRequest({"INPUT0": late_rows}, None, deadline))
        )
        await until(lambda: runner.counters.expired == 1, "the queued request to expire")
        await asyncio.wait({late}, timeout=WAIT_TIMEOUT_S)
        gate_was_shut = not session.gate.is_set()
        error = late.exception()
        session.gate.set()
        first = await blocker
        after = await runner.infer(mlp_request(2, seed=2))
        return gate_was_shut, error, first, after

    gate_was_shut, error, first, after = run(scenario())

    assert gate_was_shut
    assert isinstance(error, DeadlineExceeded)
    assert error.message == (
        "model 'late' version 1: the request's deadline passed before it could run"
    )
    assert session.rows == [1, 2]  # the blocker and the later request; never the late one
    assert not any(np.array_equal(feed["INPUT0"], late_rows) for feed in session.feeds)
    assert first.stats.rows == 1
    assert after.stats.rows == 2
    assert runner.counters.expired == 1
    assert runner.counters.executions == 2
    assert runner.counters.queued == 0


def test_deadline_already_past_is_refused_at_once(fleet: Fleet) -> None:
    runner, (session,) = fleet.gated(small_mlp(), BatchPolicy(max_batch_size=8), name="past")

    async def scenario() -> tuple[bool, BaseException | None]:
        blocker = await hold(runner, session, mlp_request(1, seed=1))
        past = ModelRequest({"INPUT0": mlp_rows(1, seed=3)}, deadline=time.monotonic() - 1.0)
        late = asyncio.create_task(runner.infer(past))
        await asyncio.sleep(0)  # one turn: the task has run as far as it can
        done = late.done()
        error = late.exception() if done else None
        session.gate.set()
        await blocker
        return done, error

    done, error = run(scenario())

    assert done
    assert isinstance(error, DeadlineExceeded)
    assert runner.counters.expired == 1
    assert runner.counters.queued == 0
    assert session.started == 1

    with pytest.raises(DeadlineExceeded):  # an idle instance changes nothing
        run(runner.infer(ModelRequest({"INPUT0": mlp_rows(1, 4)}, deadline=time.monotonic())))
    assert session.started == 1
    assert runner.counters.expired == 2


# -- cancellation --------------------------------------------------------------------------------


def test_cancelled_queued_request_is_dropped_and_never_runs(fleet: Fleet) -> None:
    runner, (session,) = fleet.gated(small_mlp(), BatchPolicy(max_batch_size=8))
    requests = [mlp_request(1, seed=120 + i) for i in range(3)]

    async def scenario() -> tuple[int, list[Outcome]]:
        blocker = await hold(runner, session, mlp_request(1, seed=1))
        tasks = await enqueue(runner, requests)
        tasks[1].cancel()
        await asyncio.wait({tasks[1]}, timeout=WAIT_TIMEOUT_S)
        queued = runner.counters.queued
        session.gate.set()
        await blocker
        return queued, await asyncio.gather(*tasks, return_exceptions=True)

    queued, (first, cancelled, third) = run(scenario())

    assert queued == 2
    assert isinstance(cancelled, asyncio.CancelledError)
    assert runner.counters.abandoned == 1
    assert session.rows == [1, 2]
    assert not any(
        np.array_equal(row, requests[1].inputs["INPUT0"][0])
        for feed in session.feeds
        for row in feed["INPUT0"]
    )
    assert_mlp_answer(session, requests[0].inputs, first)
    assert_mlp_answer(session, requests[2].inputs, third)


# -- failures inside a batch ---------------------------------------------------------------------


@pytest.mark.parametrize("bad_position", [0, 1, 2])
def test_a_member_onnx_runtime_refuses_fails_alone(fleet: Fleet, bad_position: int) -> None:
    runner, (session,) = fleet.gated(gather_table(), BatchPolicy(max_batch_size=8), name="gather")
    good = [np.array([1], np.int64), np.array([2, 3], np.int64)]
    indices = [*good]
    indices.insert(bad_position, np.array([9], np.int64))

    async def scenario() -> list[Outcome]:
        blocker = await hold(runner, session, ModelRequest({"IDX": np.array([0], np.int64)}))
        tasks = await enqueue(runner, [ModelRequest({"IDX": idx}) for idx in indices])
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = run(scenario())

    # The batch of all three (4 rows) failed, then each member ran alone.
    assert session.rows == [1, 4, *(len(idx) for idx in indices)]
    for idx, outcome in zip(indices, outcomes, strict=True):
        if int(idx[0]) == 9:
            assert isinstance(outcome, InvalidInput)
            assert outcome.message == "model 'gather' version 1 could not run on this input"
        else:
            assert isinstance(outcome, ModelResponse), outcome
            np.testing.assert_array_equal(outcome.outputs["ROWS"], TABLE[idx])
            assert outcome.stats.batch_rows == len(idx)
    assert runner.counters.queued == 0
    # The runner still serves.
    again = run(runner.infer(ModelRequest({"IDX": np.array([4], np.int64)})))
    np.testing.assert_array_equal(again.outputs["ROWS"], TABLE[[4]])


def test_outputs_without_the_batch_rows_fail_every_member(fleet: Fleet) -> None:
    runner, (session,) = fleet.gated(sum_over_batch(), BatchPolicy(max_batch_size=8))
    rows = [np.full((1, WIDTH), float(i + 1), np.float32) for i in range(3)]

    async def scenario() -> list[Outcome]:
        blocker = await hold(runner, session, ModelRequest({"X": np.ones((1, WIDTH), np.float32)}))
        tasks = await enqueue(runner, [ModelRequest({"X": x}) for x in rows])
        session.gate.set()
        await blocker
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = run(scenario())

    assert session.rows == [1, 3]
    for outcome in outcomes:
        assert isinstance(outcome, Exception)
        assert not isinstance(outcome, ModelResponse)
        assert "3 rows" in str(outcome)
    # A one-row request alone does have its row, and still gets its answer.
    alone = run(runner.infer(ModelRequest({"X": rows[0]})))
    np.testing.assert_array_equal(alone.outputs["S"], rows[0])


# -- several instances ---------------------------------------------------------------------------


def test_several_instances_run_at_once(fleet: Fleet) -> None:
    runner, sessions = fleet.gated(
        small_mlp(), BatchPolicy(max_batch_size=8), instances=3, name="wide"
    )
    requests = [mlp_request(1, seed=130 + i) for i in range(3)]

    async def scenario() -> list[ModelResponse]:
        for session in sessions:
            session.gate.clear()
        tasks = [asyncio.create_task(runner.infer(request)) for request in requests]
        # All three runs are inside ONNX Runtime together, one on each instance.
        await until(
            lambda: [session.started for session in sessions] == [1, 1, 1],
            "every instance to be running",
        )
        for session in sessions:
            session.gate.set()
        return await asyncio.gather(*tasks)

    responses = run(scenario())

    threads = [name for session in sessions for name in session.threads]
    assert sorted(threads) == ["ort-wide-1-0", "ort-wide-1-1", "ort-wide-1-2"]
    for request, response in zip(requests, responses, strict=True):
        assert_mlp_answer(sessions[0], request.inputs, response)
        assert response.stats.batch_rows == 1
    assert runner.counters.executions == 3
    assert runner.counters.queued == 0
