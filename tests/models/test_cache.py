"""The result cache (models/cache.py) and the runner's single-flight of identical requests
(models/runner.py), on real ONNX models run on the CPU."""

import asyncio
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

from tests.support.onnx_models import ALL_TYPES, echo_strings, identity_all_types, write_model
from tests.support.polling import wait_for
from turnout.errors import DeadlineExceeded, InvalidInput
from turnout.models.accounting import CacheCounters
from turnout.models.cache import CacheSettings, ResultCache
from turnout.models.instance import OrtInstance
from turnout.models.loader import InstanceGroup, VersionSpec, load_version
from turnout.models.providers import CPU, Device
from turnout.models.runner import ModelRunner
from turnout.models.scheduler import BatchPolicy
from turnout.models.session import read_signature
from turnout.models.types import ModelRequest, ModelResponse, PlacedGroup, Placement
from turnout.server.demo import build_mlp, finish_model

T = TypeVar("T")
Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
Outcome = ModelResponse | BaseException

FEATURES = 4
WIDTH = 3
KEY_BYTES = 16
ROOMY = CacheSettings(max_bytes=1 << 20, ttl_s=300.0)
GATE_TIMEOUT_S = 20.0
WAIT_TIMEOUT_S = 10.0


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


# -- models --------------------------------------------------------------------------------------


def small_mlp() -> onnx.ModelProto:
    return build_mlp(1, features=FEATURES, hidden=8, classes=3)


TABLE = np.arange(5 * WIDTH, dtype=np.float32).reshape(5, WIDTH)


def gather_table() -> onnx.ModelProto:
    """``IDX`` [batch] INT64 picks rows of a 5-row table; an index outside -5..4 makes ONNX
    Runtime refuse the run."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "IDX"], ["ROWS"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("IDX", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("ROWS", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(TABLE, "table")],
    )
    return finish_model(graph)


class GatedSession:
    """A real ONNX Runtime session that waits while its gate is shut and counts its runs."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
        self.gate = threading.Event()
        self.gate.set()
        self._runs = 0
        self._lock = threading.Lock()

    def run(
        self, output_names: list[str], feed: Feed, options: ort.RunOptions | None = None
    ) -> list[np.ndarray]:
        with self._lock:
            self._runs += 1
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the test never opened the gate")
        return list(self.session.run(output_names, feed, options))

    @property
    def runs(self) -> int:
        with self._lock:
            return self._runs


class Runners:
    """Builds runners with a cache (on gated sessions, or through load_version) and closes them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sessions: list[GatedSession] = []
        self.runners: list[ModelRunner] = []

    def gated(
        self,
        model: onnx.ModelProto,
        cache: CacheSettings | None = ROOMY,
        max_batch_size: int = 8,
        name: str = "model",
    ) -> tuple[ModelRunner, GatedSession]:
        session = GatedSession(model)
        self.sessions.append(session)
        signature = read_signature(session.session, name, "1", max_batch_size)
        runner = ModelRunner(
            signature,
            Placement((PlacedGroup("cpu", 0, 1, (CPU,)),)),
            [OrtInstance(session, f"ort-{name}-1-0")],
            BatchPolicy(max_batch_size=max_batch_size),
            cache,
        )
        self.runners.append(runner)
        return runner, session

    def load(
        self, model: onnx.ModelProto, cache: CacheSettings | None = ROOMY, **options: Any
    ) -> ModelRunner:
        path = write_model(model, self.directory / f"model{len(self.runners)}.onnx")
        groups = (InstanceGroup(Device("cpu"), 1),)
        spec = VersionSpec("model", "1", path, instance_groups=groups, cache=cache, **options)
        runner = load_version(spec)
        self.runners.append(runner)
        return runner

    def close(self) -> None:
        for session in self.sessions:
            session.gate.set()
        for runner in self.runners:
            runner.close()


@pytest.fixture
def runners(tmp_path: Path) -> Iterator[Runners]:
    built = Runners(tmp_path)
    yield built
    built.close()


async def until(probe: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.001)


def assert_same_outputs(got: Outputs, expected: Outputs) -> None:
    """Same names in the same order, and each array of the same dtype, shape and values."""
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array)


# -- hits ----------------------------------------------------------------------------------------


def all_types_request() -> ModelRequest:
    rng = np.random.default_rng(1)
    return ModelRequest(
        {
            f"IN_{name}": (rng.integers(0, 100, (2, 3)) % (2 if name == "BOOL" else 100)).astype(
                dtype
            )
            for name, _, dtype in ALL_TYPES
        }
    )


HIT_CASES = [
    pytest.param(
        small_mlp,
        lambda: ModelRequest(
            {"INPUT0": np.random.default_rng(2).standard_normal((3, FEATURES)).astype(np.float32)}
        ),
        id="mlp",
    ),
    pytest.param(
        small_mlp,
        lambda: ModelRequest(
            {"INPUT0": np.random.default_rng(3).standard_normal((2, FEATURES)).astype(np.float32)},
            ("LABEL",),
        ),
        id="mlp-one-output",
    ),
    pytest.param(identity_all_types, all_types_request, id="every-numeric-type"),
    pytest.param(
        echo_strings,
        lambda: ModelRequest({"TEXT": np.array([b"alpha", "\u00e9t\u00e9".encode()], object)}),
        id="bytes",
    ),
]


@pytest.mark.parametrize(("build", "make"), HIT_CASES)
def test_a_hit_answers_exactly_what_the_miss_answered(
    runners: Runners, build: Callable[[], onnx.ModelProto], make: Callable[[], ModelRequest]
) -> None:
    runner = runners.load(build())

    miss = run(runner.infer(make()))
    kept = {name: np.array(array, copy=True) for name, array in miss.outputs.items()}
    hit = run(runner.infer(make()))

    assert miss.stats.cache_hit is False
    assert hit.stats.cache_hit is True
    assert_same_outputs(hit.outputs, kept)
    for array in hit.outputs.values():
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array.reshape(-1)[0] = array.reshape(-1)[1]
    assert hit.stats.rows == miss.stats.rows
    counters = runner.counters.cache
    assert (counters.misses, counters.hits, counters.entries) == (1, 1, 1)
    assert runner.counters.executions == 1
    assert runner.has_cache


def test_changing_the_misses_answer_afterwards_leaves_the_cache_alone(runners: Runners) -> None:
    runner = runners.load(small_mlp())
    request = ModelRequest({"INPUT0": np.ones((2, FEATURES), np.float32)})

    miss = run(runner.infer(request))
    kept = {name: np.array(array, copy=True) for name, array in miss.outputs.items()}
    for array in miss.outputs.values():
        if array.flags.writeable:
            array[...] = 0
    hit = run(runner.infer(request))

    assert_same_outputs(hit.outputs, kept)


def test_a_runner_without_cache_runs_every_time(runners: Runners) -> None:
    runner = runners.load(small_mlp(), cache=None)
    request = ModelRequest({"INPUT0": np.ones((2, FEATURES), np.float32)})

    first = run(runner.infer(request))
    second = run(runner.infer(request))

    assert not runner.has_cache
    assert first.stats.cache_hit is None
    assert second.stats.cache_hit is None
    assert runner.counters.executions == 2
    assert runner.counters.cache == CacheCounters()


def test_batched_members_are_cached_as_their_own_rows(runners: Runners) -> None:
    """Each member of a batch caches a copy of its own rows, not the batch it was a view of."""
    runner, session = runners.gated(small_mlp())
    blocker = ModelRequest({"INPUT0": np.zeros((1, FEATURES), np.float32)})
    members = [
        ModelRequest({"INPUT0": np.full((rows, FEATURES), float(rows), np.float32)})
        for rows in (1, 2, 3)
    ]

    async def scenario() -> tuple[list[ModelResponse], list[ModelResponse]]:
        session.gate.clear()
        first = asyncio.create_task(runner.infer(blocker))
        await until(lambda: session.runs == 1, "the blocker to start running")
        tasks = [asyncio.create_task(runner.infer(member)) for member in members]
        await until(lambda: runner.counters.queued == len(members), "the members to queue")
        session.gate.set()
        await first
        misses = await asyncio.gather(*tasks)
        hits = [await runner.infer(member) for member in members]
        return misses, hits

    misses, hits = run(scenario())

    assert session.runs == 2  # the blocker, then one batch of 6 rows; the hits ran nothing
    assert [m.stats.batch_rows for m in misses] == [6, 6, 6]
    for miss, hit in zip(misses, hits, strict=True):
        assert hit.stats.cache_hit is True
        assert_same_outputs(hit.outputs, miss.outputs)
    per_row = sum(array[:1].nbytes for array in misses[0].outputs.values())
    blocker_bytes = per_row + KEY_BYTES
    members_bytes = sum(rows * per_row + KEY_BYTES for rows in (1, 2, 3))
    assert runner.counters.cache.bytes == blocker_bytes + members_bytes
    assert runner.counters.cache.entries == 4


# -- keys ----------------------------------------------------------------------------------------


def f32(values: list[float], shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.array(values, dtype=np.float32)
    return array if shape is None else array.reshape(shape)


def texts(*elements: bytes) -> np.ndarray:
    return np.array(list(elements), dtype=object)


SIX = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
Keyed = tuple[str, Feed, tuple[str, ...]]

DIFFERENT_KEYS = [
    pytest.param(
        ("m\x001", {"X": f32([1.0, 2.0])}, ("Y",)),
        ("m\x001", {"X": f32([1.0, 2.0]).view(np.int32)}, ("Y",)),
        id="same-bytes-different-dtype",
    ),
    pytest.param(
        ("m\x001", {"X": np.array([1, 0], np.uint8)}, ("Y",)),
        ("m\x001", {"X": np.array([True, False])}, ("Y",)),
        id="bool-and-uint8-same-bytes",
    ),
    pytest.param(
        ("m\x001", {"X": np.array([1, 2], np.int32)}, ("Y",)),
        ("m\x001", {"X": np.array([1, 2], np.int64)}, ("Y",)),
        id="same-values-different-width",
    ),
    pytest.param(
        ("m\x001", {"X": f32(SIX, (2, 3))}, ("Y",)),
        ("m\x001", {"X": f32(SIX, (3, 2))}, ("Y",)),
        id="same-values-different-shape",
    ),
    pytest.param(
        ("m\x001", {"X": f32(SIX, (6,))}, ("Y",)),
        ("m\x001", {"X": f32(SIX, (1, 6))}, ("Y",)),
        id="same-values-extra-dimension",
    ),
    pytest.param(
        ("m\x001", {"X": f32([1.0, 2.0])}, ("Y",)),
        ("m\x001", {"X": f32([1.0, 2.5])}, ("Y",)),
        id="different-values",
    ),
    pytest.param(
        ("m\x001", {"T": texts(b"ab", b"c")}, ("Y",)),
        ("m\x001", {"T": texts(b"a", b"bc")}, ("Y",)),
        id="bytes-split-differently",
    ),
    pytest.param(
        ("m\x001", {"T": texts(b"", b"abc")}, ("Y",)),
        ("m\x001", {"T": texts(b"abc", b"")}, ("Y",)),
        id="bytes-empty-element-moved",
    ),
    pytest.param(
        ("m\x001", {"X": f32([1.0])}, ("Y",)),
        ("m\x002", {"X": f32([1.0])}, ("Y",)),
        id="different-version",
    ),
    pytest.param(
        ("m\x001", {"X": f32([1.0])}, ("Y",)),
        ("n\x001", {"X": f32([1.0])}, ("Y",)),
        id="different-model",
    ),
    pytest.param(
        ("m\x001", {"X": f32([1.0])}, ("Y",)),
        ("m\x001", {"X": f32([1.0])}, ("Z",)),
        id="different-requested-output",
    ),
    pytest.param(
        ("m\x001", {"X": f32([1.0])}, ("Y",)),
        ("m\x001", {"X": f32([1.0])}, ("Y", "Z")),
        id="more-requested-outputs",
    ),
    pytest.param(
        ("m\x001", {"X": f32([1.0])}, ("Y",)),
        ("m\x001", {"W": f32([1.0])}, ("Y",)),
        id="different-input-name",
    ),
    pytest.param(
        ("m\x001", {"A": f32([1.0]), "B": f32([2.0])}, ("Y",)),
        ("m\x001", {"A": f32([2.0]), "B": f32([1.0])}, ("Y",)),
        id="values-swapped-between-inputs",
    ),
]


@pytest.mark.parametrize(("first", "second"), DIFFERENT_KEYS)
def test_requests_that_may_differ_in_result_get_different_keys(first: Keyed, second: Keyed) -> None:
    def key(keyed: Keyed) -> bytes:
        identity, inputs, outputs = keyed
        return ResultCache(ROOMY, identity, CacheCounters()).key(inputs, outputs)

    assert len(key(first)) == KEY_BYTES
    assert key(first) != key(second)
    assert key(first) == key(first)


def strided() -> np.ndarray:
    return np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]


SAME_KEYS = [
    pytest.param(
        {"X": f32(SIX, (2, 3))}, {"X": f32(SIX, (2, 3))}, id="equal-arrays-separate-objects"
    ),
    pytest.param({"X": strided()}, {"X": np.ascontiguousarray(strided())}, id="strided-view"),
    pytest.param(
        {"X": f32(SIX, (2, 3))}, {"X": np.asfortranarray(f32(SIX, (2, 3)))}, id="fortran-order"
    ),
    pytest.param(
        {"A": f32([1.0]), "B": f32([2.0])}, {"B": f32([2.0]), "A": f32([1.0])}, id="input-order"
    ),
    pytest.param({"T": texts(b"ab", b"c")}, {"T": texts(b"ab", b"c")}, id="bytes"),
]


@pytest.mark.parametrize(("first", "second"), SAME_KEYS)
def test_identical_requests_get_the_same_key(first: Feed, second: Feed) -> None:
    cache = ResultCache(ROOMY, "m\x001", CacheCounters())

    assert cache.key(first, ("Y",)) == cache.key(second, ("Y",))


# -- eviction ------------------------------------------------------------------------------------


def payload(fill: int, size: int = 100) -> Outputs:
    return {"Y": np.full(size, fill, dtype=np.uint8)}


ENTRY = 100 + KEY_BYTES  # one payload() and its key


class Filled:
    """A cache holding at most three payload() entries, and keys for some requests."""

    def __init__(self, max_bytes: int = 3 * ENTRY, ttl_s: float = 300.0) -> None:
        self.counters = CacheCounters()
        self.cache = ResultCache(CacheSettings(max_bytes, ttl_s), "m\x001", self.counters)

    def key(self, value: float) -> bytes:
        return self.cache.key({"X": f32([value])}, ("Y",))


def test_least_recently_used_goes_first() -> None:
    filled = Filled()
    a, b, c, d = (filled.key(v) for v in (1.0, 2.0, 3.0, 4.0))
    for fill, key in enumerate((a, b, c)):
        filled.cache.put(key, payload(fill))
    assert (filled.counters.entries, filled.counters.bytes) == (3, 3 * ENTRY)

    assert filled.cache.get(a) is not None  # a is now the most recently used
    filled.cache.put(d, payload(3))

    assert filled.cache.get(b) is None
    for fill, key in ((0, a), (2, c), (3, d)):
        got = filled.cache.get(key)
        assert got is not None
        np.testing.assert_array_equal(got["Y"], payload(fill)["Y"])
    assert filled.counters.evictions == 1
    assert (filled.counters.entries, filled.counters.bytes) == (3, 3 * ENTRY)


def test_a_large_entry_evicts_as_many_as_it_needs() -> None:
    filled = Filled()
    keys = [filled.key(v) for v in (1.0, 2.0, 3.0)]
    for fill, key in enumerate(keys):
        filled.cache.put(key, payload(fill))

    big = filled.key(9.0)
    filled.cache.put(big, payload(9, size=3 * ENTRY - KEY_BYTES))  # exactly the whole budget

    assert [filled.cache.get(key) is None for key in keys] == [True, True, True]
    assert filled.cache.get(big) is not None
    assert filled.counters.evictions == 3
    assert (filled.counters.entries, filled.counters.bytes) == (1, 3 * ENTRY)


@pytest.mark.parametrize(
    "outputs",
    [
        pytest.param(payload(1, size=3 * ENTRY), id="numeric"),
        # BYTES elements live outside the array: an object array's nbytes counts pointers only.
        pytest.param({"ECHO": np.array([b"x" * (10 * ENTRY)], dtype=object)}, id="bytes"),
    ],
)
def test_an_entry_larger_than_the_budget_is_not_kept(outputs: Outputs) -> None:
    filled = Filled()
    kept = filled.key(1.0)
    filled.cache.put(kept, payload(1))

    too_big = filled.key(2.0)
    filled.cache.put(too_big, outputs)

    assert filled.cache.get(too_big) is None
    assert filled.cache.get(kept) is not None  # nothing was evicted to make room in vain
    assert filled.counters.evictions == 0
    assert (filled.counters.entries, filled.counters.bytes) == (1, ENTRY)


def test_putting_a_key_again_replaces_it() -> None:
    filled = Filled()
    key = filled.key(1.0)
    filled.cache.put(key, payload(1))

    filled.cache.put(key, payload(2, size=50))

    got = filled.cache.get(key)
    assert got is not None
    np.testing.assert_array_equal(got["Y"], payload(2, size=50)["Y"])
    assert filled.counters.evictions == 0
    assert (filled.counters.entries, filled.counters.bytes) == (1, 50 + KEY_BYTES)


def test_entries_expire_after_the_ttl() -> None:
    filled = Filled(ttl_s=0.05)
    key = filled.key(1.0)
    filled.cache.put(key, payload(1))
    assert filled.counters.entries == 1

    wait_for(lambda: filled.cache.get(key) is None, "the entry to expire", timeout_s=5.0)

    assert filled.counters.evictions == 1
    assert (filled.counters.entries, filled.counters.bytes) == (0, 0)


def test_an_expired_result_is_computed_again(runners: Runners) -> None:
    runner = runners.load(small_mlp(), cache=CacheSettings(max_bytes=1 << 20, ttl_s=0.05))
    request = ModelRequest({"INPUT0": np.ones((1, FEATURES), np.float32)})
    first = run(runner.infer(request))

    def computed_again() -> ModelResponse | None:
        response = run(runner.infer(request))
        return response if response.stats.cache_hit is False else None

    again = wait_for(computed_again, "a miss once the entry expired", timeout_s=5.0)

    assert_same_outputs(again.outputs, first.outputs)
    assert runner.counters.cache.misses == 2
    assert runner.counters.executions == 2


# -- single flight -------------------------------------------------------------------------------


@pytest.mark.parametrize("copies", [2, 5, 20])
def test_identical_concurrent_requests_run_once(runners: Runners, copies: int) -> None:
    runner = runners.load(small_mlp())
    inputs = np.random.default_rng(7).standard_normal((2, FEATURES)).astype(np.float32)

    async def all_at_once() -> list[ModelResponse]:
        return await asyncio.gather(
            *(runner.infer(ModelRequest({"INPUT0": inputs.copy()})) for _ in range(copies))
        )

    responses = run(all_at_once())

    assert runner.counters.executions == 1
    assert [r.stats.cache_hit for r in responses] == [False] + [True] * (copies - 1)
    for response in responses[1:]:
        assert_same_outputs(response.outputs, responses[0].outputs)
    counters = runner.counters.cache
    assert (counters.misses, counters.hits, counters.entries) == (1, copies - 1, 1)

    later = run(runner.infer(ModelRequest({"INPUT0": inputs})))
    assert later.stats.cache_hit is True
    assert_same_outputs(later.outputs, responses[0].outputs)
    assert runner.counters.executions == 1


def test_different_concurrent_requests_each_run(runners: Runners) -> None:
    runner = runners.load(small_mlp())
    feeds = [np.full((1, FEATURES), float(i), np.float32) for i in range(4)]

    async def all_at_once() -> list[ModelResponse]:
        return await asyncio.gather(*(runner.infer(ModelRequest({"INPUT0": x})) for x in feeds))

    responses = run(all_at_once())

    assert [r.stats.cache_hit for r in responses] == [False] * 4
    assert runner.counters.cache.misses == 4
    assert runner.counters.cache.entries == 4


def test_waiters_get_the_result_when_the_first_caller_gives_up(runners: Runners) -> None:
    runner, session = runners.gated(small_mlp())
    inputs = np.full((1, FEATURES), 0.5, np.float32)

    async def scenario() -> tuple[list[Outcome], ModelResponse]:
        session.gate.clear()
        first = asyncio.create_task(runner.infer(ModelRequest({"INPUT0": inputs})))
        await until(lambda: session.runs == 1, "the first request to start running")
        waiters = [
            asyncio.create_task(runner.infer(ModelRequest({"INPUT0": inputs}))) for _ in range(2)
        ]
        await until(lambda: runner.counters.cache.hits == 2, "the waiters to join the flight")
        first.cancel()
        await asyncio.wait({first}, timeout=WAIT_TIMEOUT_S)
        session.gate.set()
        outcomes = await asyncio.gather(first, *waiters, return_exceptions=True)
        later = await runner.infer(ModelRequest({"INPUT0": inputs}))
        return outcomes, later

    (cancelled, *answered), later = run(scenario())

    assert isinstance(cancelled, asyncio.CancelledError)
    direct = session.session.run(["OUTPUT0", "LABEL"], {"INPUT0": inputs})
    for outcome in answered:
        assert isinstance(outcome, ModelResponse), outcome
        np.testing.assert_allclose(outcome.outputs["OUTPUT0"], direct[0], rtol=1e-5)
    assert later.stats.cache_hit is True  # the abandoned flight's result was still kept
    assert session.runs == 1


def test_a_failure_is_never_cached(runners: Runners) -> None:
    runner, session = runners.gated(gather_table(), name="gather")
    bad = ModelRequest({"IDX": np.array([9], np.int64)})

    async def concurrently(copies: int) -> list[Outcome]:
        return await asyncio.gather(
            *(runner.infer(bad) for _ in range(copies)), return_exceptions=True
        )

    first = run(concurrently(3))
    assert session.runs == 1  # the identical requests shared the failing run
    second = run(concurrently(1))

    for outcome in (*first, *second):
        assert isinstance(outcome, InvalidInput)
        assert outcome.message == "model 'gather' version 1 could not run on this input"
    assert session.runs == 2  # the second attempt ran again
    counters = runner.counters.cache
    assert (counters.misses, counters.hits, counters.entries, counters.bytes) == (2, 2, 0, 0)

    good = run(runner.infer(ModelRequest({"IDX": np.array([4], np.int64)})))
    np.testing.assert_array_equal(good.outputs["ROWS"], TABLE[[4]])
    assert runner.counters.cache.entries == 1


def test_a_waiter_is_not_failed_by_the_first_callers_deadline(runners: Runners) -> None:
    """The identical request that started the run had a short deadline and expired in the queue;
    a waiter with no deadline of its own must still get its answer."""
    runner, session = runners.gated(small_mlp())
    inputs = np.full((1, FEATURES), 0.5, np.float32)

    async def scenario() -> tuple[Outcome, Outcome]:
        session.gate.clear()
        blocker = asyncio.create_task(
            runner.infer(ModelRequest({"INPUT0": np.zeros((1, FEATURES), np.float32)}))
        )
        await until(lambda: session.runs == 1, "the blocker to start running")
        hurried = asyncio.create_task(
            runner.infer(ModelRequest({"INPUT0": inputs}, deadline=time.monotonic() + 0.02))
        )
        patient = asyncio.create_task(runner.infer(ModelRequest({"INPUT0": inputs})))
        await until(lambda: runner.counters.expired == 1, "the hurried request to expire")
        await asyncio.wait({hurried}, timeout=WAIT_TIMEOUT_S)
        session.gate.set()
        await blocker
        return await asyncio.gather(hurried, patient, return_exceptions=True)

    hurried, patient = run(scenario())

    assert isinstance(hurried, DeadlineExceeded)
    assert isinstance(patient, ModelResponse), repr(patient)
    direct = session.session.run(["OUTPUT0"], {"INPUT0": inputs})[0]
    np.testing.assert_allclose(patient.outputs["OUTPUT0"], direct, rtol=1e-5)


def test_a_waiter_keeps_its_own_deadline(runners: Runners) -> None:
    """A waiter whose deadline passes while the identical run it waits for is still queued is
    answered DeadlineExceeded then (README: a request whose deadline passes while it is still
    queued is dropped), not whenever that run ends."""
    runner, session = runners.gated(small_mlp())
    inputs = np.full((1, FEATURES), 0.25, np.float32)

    async def scenario() -> tuple[bool, tuple[Outcome, Outcome]]:
        session.gate.clear()
        blocker = asyncio.create_task(
            runner.infer(ModelRequest({"INPUT0": np.zeros((1, FEATURES), np.float32)}))
        )
        await until(lambda: session.runs == 1, "the blocker to start running")
        patient = asyncio.create_task(runner.infer(ModelRequest({"INPUT0": inputs})))
        await until(lambda: runner.counters.queued == 1, "the first request to queue")
        hurried = asyncio.create_task(
            runner.infer(ModelRequest({"INPUT0": inputs}, deadline=time.monotonic() + 0.02))
        )
        try:
            await until(hurried.done, "the waiter's deadline to be enforced", timeout_s=1.0)
            answered_in_time = True
        except AssertionError:
            answered_in_time = False
        session.gate.set()
        await blocker
        return answered_in_time, await asyncio.gather(hurried, patient, return_exceptions=True)

    answered_in_time, (hurried, patient) = run(scenario())

    assert isinstance(patient, ModelResponse), repr(patient)
    assert answered_in_time, "the waiter was held past its deadline until the shared run ended"
    assert isinstance(hurried, DeadlineExceeded), repr(hurried)
