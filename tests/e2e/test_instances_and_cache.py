"""Instance groups and the result cache end to end, in model-repository mode (each model's
settings in ``DIR/<model>/turnout.yaml``).

Two CPU instances run two requests at the same time where one instance makes the second wait; a
GPU group on a machine without a usable GPU falls back to the CPU with a warning naming the
model and still answers correctly; the cache answers a repeated request with exactly what the
first answered, counts hits, misses and evictions, expires entries, and lets identical requests
that arrive while the first still runs share its result."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from tests.support.batching_models import BUSY_STEPS, slow_echo
from tests.support.e2e import (
    ATOL,
    RTOL,
    assert_mlp_outputs,
    inflight,
    mlp_json_request,
    mlp_rows,
    run_onnx,
    scrape,
)
from tests.support.onnx_models import write_model
from tests.support.polling import wait_for
from tests.support.prometheus import Scrape
from tests.support.rawhttp import Reply, post_json
from tests.support.scheduling import (
    Busy,
    InThread,
    echo_body,
    echo_values,
    executions_by_batch_size,
    grown,
    http_echo,
    json_array,
    launched,
    model_stats,
    queue_depth,
    raw_outputs,
    series,
)
from tests.support.server import TurnoutProcess
from turnout.models.providers import cuda_device_count
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.server.demo import build_mlp

CACHE_BYTES = 1_000_000
# Holds one one-row classifier result (40 + 8 bytes of outputs and a 16-byte key), not two.
TINY_CACHE_BYTES = 100
TTL_S = 0.2
# A request budget (microseconds) far shorter than the slow request keeps an instance busy.
SHORT_US = 100_000
CPU_ONLY = [{"kind": "cpu", "count": 1}]
# Whether this machine can put the ``gpu`` group on a GPU at all.
CUDA_USABLE = "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count() > 0
OUTPUTS = ("OUTPUT0", "LABEL")

# model -> (what it is, its turnout.yaml)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "pair": ("echo", {"instances": [{"kind": "cpu", "count": 2}]}),
    "single": ("echo", {"instances": CPU_ONLY}),
    "accelerated": ("mlp", {"instances": [{"kind": "gpu", "count": 1}]}),
    "cached": ("mlp", {"instances": CPU_ONLY, "cache": {"max_bytes": CACHE_BYTES}}),
    "tiny": ("mlp", {"instances": CPU_ONLY, "cache": {"max_bytes": TINY_CACHE_BYTES}}),
    "brief": (
        "mlp",
        {"instances": CPU_ONLY, "cache": {"max_bytes": CACHE_BYTES, "ttl_s": TTL_S}},
    ),
    "cached_echo": ("echo", {"instances": CPU_ONLY, "cache": {"max_bytes": CACHE_BYTES}}),
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton-style repository of this file's models with their settings files."""
    root = tmp_path_factory.mktemp("instances_and_cache")
    for name, (kind, settings) in MODELS.items():
        model = slow_echo() if kind == "echo" else build_mlp(seed=6)
        write_model(model, root / name / "1" / "model.onnx")
        (root / name / "turnout.yaml").write_text(json.dumps(settings))
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[TurnoutProcess]:
    """This file's own ``turnout serve --model-repository``."""
    with TurnoutProcess(
        ["--model-repository", str(repository)], repository.parent / "instances_run"
    ) as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture(scope="module")
def stub(server: TurnoutProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Turnout's own stub on a channel to this file's server."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _mlp_path(repository: Path, model: str) -> Path:
    return repository / model / "1" / "model.onnx"


def _grew(before: Scrape, after: Scrape, name: str, model: str) -> float:
    """How much a per-version metric grew between two scrapes."""
    return series(after, name, model) - series(before, name, model)


def _config(server: TurnoutProcess, model: str) -> dict[str, Any]:
    status, body = server.get(f"/v2/models/{model}/config")
    assert status == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


# --- instances ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Concurrency:
    """While two slow requests of ``model`` are in flight: how many run and how many wait."""

    model: str
    instances: int
    running: int
    waiting: int


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Concurrency("pair", 2, running=2, waiting=0), id="two-instances"),
        pytest.param(Concurrency("single", 1, running=1, waiting=1), id="one-instance"),
    ],
)
def test_instances_run_requests_at_the_same_time(server: TurnoutProcess, case: Concurrency) -> None:
    assert inflight(server, "http") == 0
    started = launched(server, case.model)
    executions = executions_by_batch_size(server, case.model)
    body = echo_body(np.array([[BUSY_STEPS]]))
    calls = [
        InThread(lambda: post_json(server.http_url, f"/v2/models/{case.model}/infer", body))
        for _ in range(2)
    ]

    def observed(metrics: Scrape) -> tuple[float, float, float]:
        return (
            metrics.value("turnout_inflight_requests", protocol="http"),
            series(metrics, "turnout_queue_duration_seconds_count", case.model) - started,
            series(metrics, "turnout_queue_depth", case.model),
        )

    # One scrape seeing both requests in flight, ``running`` of them taken by instances and
    # the rest waiting: with two instances nothing waits while both run.
    wait_for(
        lambda: observed(scrape(server)) == (2, case.running, case.waiting),
        f"two requests in flight, {case.running} running and {case.waiting} waiting",
    )
    for call in calls:
        reply = call.result()
        np.testing.assert_array_equal(json_array(reply, "Y"), [[BUSY_STEPS]])
    # Each ran alone (nothing to batch with when it started).
    assert grown(executions, executions_by_batch_size(server, case.model)) == {1: 2}
    groups = _config(server, case.model)["instance_group"]
    assert [(group["kind"], group["count"]) for group in groups] == [("KIND_CPU", case.instances)]


@pytest.mark.skipif(CUDA_USABLE, reason="this machine has a usable GPU: no fallback to check")
def test_gpu_group_falls_back_to_the_cpu_with_a_warning_naming_the_model(
    server: TurnoutProcess,
) -> None:
    warnings = [line for line in server.logs().splitlines() if " WARNING " in line]
    assert any("accelerated" in line and "CPU" in line for line in warnings), warnings


def test_gpu_group_config_says_where_it_runs(server: TurnoutProcess) -> None:
    groups = _config(server, "accelerated")["instance_group"]
    assert len(groups) == 1, groups
    assert groups[0]["count"] == 1
    if CUDA_USABLE:
        assert groups[0]["kind"] == "KIND_GPU"
        assert groups[0]["gpus"] == [0]
    else:
        assert groups[0]["kind"] == "KIND_CPU"
        assert "gpus" not in groups[0]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_gpu_group_serves_correctly(
    server: TurnoutProcess,
    stub: pb_grpc.GRPCInferenceServiceStub,
    repository: Path,
    protocol: str,
) -> None:
    rows = mlp_rows(3, seed=21)
    outputs = _ask(server, stub, "accelerated", protocol, rows)
    assert_mlp_outputs(outputs, run_onnx(_mlp_path(repository, "accelerated"), {"INPUT0": rows}))


# --- the result cache -----------------------------------------------------------------------------


def _ask(
    server: TurnoutProcess,
    stub: pb_grpc.GRPCInferenceServiceStub,
    model: str,
    protocol: str,
    rows: np.ndarray,
    outputs: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """The classifier's answer for ``rows`` (only ``outputs`` when given) by ``protocol``."""
    if protocol == "http":
        wanted = {"outputs": [{"name": name} for name in outputs]} if outputs else {}
        reply = post_json(
            server.http_url, f"/v2/models/{model}/infer", mlp_json_request(rows, **wanted)
        )
        assert reply.status == 200, reply
        names = [output["name"] for output in reply.json()["outputs"]]
        return {name: json_array(reply, name) for name in names}
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="INPUT0", datatype="FP32", shape=list(rows.shape)
            )
        ],
        raw_input_contents=[rows.tobytes()],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
    )
    return raw_outputs(stub.ModelInfer(request, timeout=30))


@dataclass(frozen=True, slots=True)
class CacheStep:
    """A request of ``cached`` and the cache's hit and miss totals after it."""

    protocol: str
    seed: int
    rows: int
    outputs: tuple[str, ...]
    hits: int
    misses: int


# In order: the first request fills the cache; the same request hits whichever protocol asks
# again; other rows, more rows or other requested outputs are other keys.
CACHE_STEPS = {
    "first": CacheStep("http", 1, 1, (), hits=0, misses=1),
    "same-again": CacheStep("http", 1, 1, (), hits=1, misses=1),
    "same-over-grpc": CacheStep("grpc", 1, 1, (), hits=2, misses=1),
    "other-rows": CacheStep("http", 2, 1, (), hits=2, misses=2),
    "more-rows": CacheStep("grpc", 1, 2, (), hits=2, misses=3),
    "fewer-outputs": CacheStep("http", 1, 1, ("OUTPUT0",), hits=2, misses=4),
    "fewer-outputs-again": CacheStep("grpc", 1, 1, ("OUTPUT0",), hits=3, misses=4),
    "all-outputs-named": CacheStep("http", 1, 1, OUTPUTS, hits=4, misses=4),
}


@dataclass(frozen=True, slots=True)
class CacheRun:
    """Each step's answer and the cache counters after it."""

    answers: dict[str, dict[str, np.ndarray]]
    counters: dict[str, tuple[float, float]]
    invalid_status: int
    after: Scrape


@pytest.fixture(scope="module")
def cache_run(server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub) -> CacheRun:
    """CACHE_STEPS sent in order, then a request the model refuses (never counted)."""
    answers, counters = {}, {}
    for name, step in CACHE_STEPS.items():
        rows = mlp_rows(step.rows, seed=step.seed)
        answers[name] = _ask(server, stub, "cached", step.protocol, rows, step.outputs)
        metrics = scrape(server)
        counters[name] = (
            series(metrics, "turnout_cache_hits_total", "cached"),
            series(metrics, "turnout_cache_misses_total", "cached"),
        )
    invalid = mlp_json_request(mlp_rows(1, seed=1))
    invalid["inputs"][0]["datatype"] = "FP64"
    status = post_json(server.http_url, "/v2/models/cached/infer", invalid).status
    return CacheRun(answers, counters, status, scrape(server))


@pytest.mark.parametrize("name", list(CACHE_STEPS))
def test_cache_step(cache_run: CacheRun, repository: Path, name: str) -> None:
    step = CACHE_STEPS[name]
    assert cache_run.counters[name] == (step.hits, step.misses)
    answer = cache_run.answers[name]
    assert tuple(answer) == (step.outputs or OUTPUTS)
    expected = run_onnx(_mlp_path(repository, "cached"), {"INPUT0": mlp_rows(step.rows, step.seed)})
    for output, array in answer.items():
        np.testing.assert_allclose(array, expected[output], rtol=RTOL, atol=ATOL)
    # A hit answers exactly what the miss that filled the cache answered.
    filled_by = next(
        other
        for other, earlier in CACHE_STEPS.items()
        if (earlier.seed, earlier.rows, earlier.outputs or OUTPUTS)
        == (step.seed, step.rows, step.outputs or OUTPUTS)
    )
    for output, array in answer.items():
        np.testing.assert_array_equal(array, cache_run.answers[filled_by][output])


def test_cache_counts_and_bytes(cache_run: CacheRun) -> None:
    last = list(CACHE_STEPS.values())[-1]
    assert cache_run.invalid_status == 400
    after = cache_run.after
    assert series(after, "turnout_cache_hits_total", "cached") == last.hits
    assert series(after, "turnout_cache_misses_total", "cached") == last.misses
    assert series(after, "turnout_cache_evictions_total", "cached") == 0
    held = series(after, "turnout_cache_bytes", "cached")
    # At least the outputs of the four distinct results: 1 + 1 + 2 rows of both, 1 of OUTPUT0.
    assert 4 * (40 + 8) + 40 <= held <= CACHE_BYTES
    assert "# TYPE turnout_cache_hits_total counter" in after.text
    assert "# TYPE turnout_cache_bytes gauge" in after.text
    # Versions without a cache export no cache series.
    assert not after.find("turnout_cache_hits_total", endpoint="pair")


def test_cache_statistics(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub, cache_run: CacheRun
) -> None:
    last = list(CACHE_STEPS.values())[-1]
    stats = model_stats(server, "cached")
    inference = stats["inference_stats"]
    assert inference["cache_hit"]["count"] == last.hits
    assert inference["cache_miss"]["count"] == last.misses
    assert inference["success"]["count"] == len(CACHE_STEPS)
    # Hits run nothing: one execution per miss; every request's rows count as inferences.
    assert stats["execution_count"] == last.misses
    assert stats["inference_count"] == sum(step.rows for step in CACHE_STEPS.values())
    over_grpc = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cached"), timeout=10)
    assert over_grpc.model_stats[0].inference_stats.cache_hit.count == last.hits
    assert over_grpc.model_stats[0].inference_stats.cache_miss.count == last.misses
    assert cache_run.answers


def test_tiny_cache_evicts_the_least_recently_used(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub, repository: Path
) -> None:
    first, second = mlp_rows(1, seed=31), mlp_rows(1, seed=32)
    # (rows, hits, misses, evictions) after each request: the budget holds one result.
    steps = [(first, 0, 1, 0), (second, 0, 2, 1), (first, 0, 3, 2), (first, 1, 3, 2)]
    for rows, hits, misses, evictions in steps:
        outputs = _ask(server, stub, "tiny", "http", rows)
        assert_mlp_outputs(outputs, run_onnx(_mlp_path(repository, "tiny"), {"INPUT0": rows}))
        metrics = scrape(server)
        assert (
            series(metrics, "turnout_cache_hits_total", "tiny"),
            series(metrics, "turnout_cache_misses_total", "tiny"),
            series(metrics, "turnout_cache_evictions_total", "tiny"),
        ) == (hits, misses, evictions)
        assert 0 < series(metrics, "turnout_cache_bytes", "tiny") <= TINY_CACHE_BYTES


def test_cache_entries_expire(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    rows = mlp_rows(1, seed=41)
    first = _ask(server, stub, "brief", "http", rows)
    again = _ask(server, stub, "brief", "http", rows)
    for output in OUTPUTS:
        np.testing.assert_array_equal(first[output], again[output])
    metrics = scrape(server)
    assert series(metrics, "turnout_cache_hits_total", "brief") == 1
    assert series(metrics, "turnout_cache_misses_total", "brief") == 1

    def missed_again() -> bool:
        _ask(server, stub, "brief", "http", rows)
        return series(scrape(server), "turnout_cache_misses_total", "brief") == 2

    # Asked repeatedly (hits) until the entry's ttl_s has passed and it misses once more.
    wait_for(missed_again, "the entry to expire", timeout_s=TTL_S + 10)
    metrics = scrape(server)
    assert series(metrics, "turnout_cache_evictions_total", "brief") == 1
    assert model_stats(server, "brief")["execution_count"] == 2


def test_identical_requests_in_flight_share_one_run(server: TurnoutProcess) -> None:
    """Identical requests arriving while the first still runs wait for its result (hits);
    another request is a miss and runs after it."""
    executions = executions_by_batch_size(server, "cached_echo")
    before = scrape(server)
    stats_before = model_stats(server, "cached_echo")["inference_stats"]
    body = echo_body(np.array([[BUSY_STEPS]]))
    other = echo_values(1, 1, start=7)
    with Busy(server, "cached_echo", body):
        same = [
            InThread(lambda: post_json(server.http_url, "/v2/models/cached_echo/infer", body))
            for _ in range(2)
        ]
        different = InThread(
            lambda: post_json(server.http_url, "/v2/models/cached_echo/infer", echo_body(other))
        )

        def arrived() -> bool:
            metrics = scrape(server)
            return (
                _grew(before, metrics, "turnout_cache_hits_total", "cached_echo") == 2
                and _grew(before, metrics, "turnout_cache_misses_total", "cached_echo") == 2
                and series(metrics, "turnout_queue_depth", "cached_echo") == 1
            )

        wait_for(arrived, "two identical requests waiting on the first and another queued")
    for call in same:
        np.testing.assert_array_equal(json_array(call.result(), "Y"), [[BUSY_STEPS]])
    np.testing.assert_array_equal(json_array(different.result(), "Y"), other)
    # The slow request ran once for all three; the different one ran on its own.
    assert grown(executions, executions_by_batch_size(server, "cached_echo")) == {1: 2}
    stats = model_stats(server, "cached_echo")["inference_stats"]
    for field, count in (("cache_hit", 2), ("cache_miss", 2)):
        assert stats[field]["count"] - stats_before[field]["count"] == count, field


def test_an_identical_request_outlives_the_deadline_of_the_one_it_waits_on(
    server: TurnoutProcess,
) -> None:
    """A request that finds an identical one queued waits for its result; when that one's own
    short deadline passes, the waiter, whose budget has not run out, must still be answered
    (its deadline is its own: README, "Dynamic batching, queues and deadlines")."""
    slow = BUSY_STEPS + 1
    values = echo_values(1, 1, start=11)

    def check_busy(reply: Reply) -> None:
        np.testing.assert_array_equal(json_array(reply, "Y"), [[slow]])

    before = scrape(server)

    def grew(name: str) -> float:
        return _grew(before, scrape(server), name, "cached_echo")

    with Busy(server, "cached_echo", echo_body(np.array([[slow]])), check_busy):
        hurried = InThread(lambda: http_echo(server, "cached_echo", values, SHORT_US))
        wait_for(lambda: queue_depth(server, "cached_echo") == 1, "the hurried request queued")
        patient = InThread(lambda: http_echo(server, "cached_echo", values))
        wait_for(lambda: grew("turnout_cache_hits_total") == 1, "the patient request joining it")
        first = hurried.result()
        assert first.code == "504", first
    second = patient.result()
    assert second.code == "200", second
    assert second.values is not None
    np.testing.assert_array_equal(second.values, values)


@pytest.mark.parametrize(
    ("model", "enabled"),
    [("cached", True), ("tiny", True), ("pair", False), ("accelerated", False)],
)
def test_config_reports_the_response_cache(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub, model: str, enabled: bool
) -> None:
    assert _config(server, model).get("response_cache", {}).get("enable", False) is enabled
    config = stub.ModelConfig(pb.ModelConfigRequest(name=model), timeout=10).config
    assert config.response_cache.enable is enabled
