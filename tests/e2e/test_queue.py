"""The bounded queue and request deadlines end to end.

A full queue refuses the next request at once (HTTP 503 with Retry-After, gRPC
RESOURCE_EXHAUSTED) while the queued ones still complete. A request whose deadline (the client's
gRPC deadline, the ``timeout`` parameter in microseconds, or the version's ``timeout_ms``) passes
while it waits is answered 504 / DEADLINE_EXCEEDED and never runs; one within its budget
succeeds; the server keeps serving after each.

Each scenario keeps the version's only instance busy with a slow request, sends its requests
while it runs, and observes the queue (turnout_queue_depth) instead of sleeping."""

import functools
import json
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from tests.support.batching_models import slow_echo
from tests.support.e2e import scrape, write_config
from tests.support.onnx_models import write_model
from tests.support.polling import wait_for
from tests.support.prometheus import Scrape
from tests.support.rawhttp import post_json
from tests.support.scheduling import (
    Busy,
    InThread,
    Outcome,
    echo_body,
    echo_message,
    echo_values,
    executions_by_batch_size,
    grown,
    http_echo,
    model_stats,
    queue_depth,
    series,
    stub_echo,
    triton_grpc_echo,
    triton_http_echo,
)
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2_grpc as pb_grpc

MAX_QUEUE_SIZE = 2
MODEL_TIMEOUT_MS = 200
# A short budget (microseconds): far less than the slow request keeps the instance busy.
SHORT_US = 100_000
# A budget the wait behind the slow request fits in with plenty to spare.
LONG_US = 30_000_000
ECHO_FILE = "slow_echo.onnx"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    """This file's own server: the slow echo model as ``bounded`` (a queue of two),
    ``deadline`` (no default budget) and ``budget`` (timeout_ms), one CPU instance each."""
    root = tmp_path_factory.mktemp("queue")
    write_model(slow_echo(), root / ECHO_FILE)
    common = {"version": 1, "path": ECHO_FILE, "device": "cpu"}
    config = write_config(
        root / "turnout.yaml",
        {
            "models": [
                {"name": "bounded", "max_queue_size": MAX_QUEUE_SIZE, **common},
                {"name": "deadline", **common},
                {"name": "budget", "timeout_ms": MODEL_TIMEOUT_MS, **common},
            ]
        },
    )
    with TurnoutProcess(["--config", str(config)], root / "run") as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture(scope="module")
def stub(server: TurnoutProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Turnout's own stub on a channel to this file's server."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


Send = Callable[[TurnoutProcess, pb_grpc.GRPCInferenceServiceStub, str, np.ndarray], Outcome]


def _http(timeout_us: int | None = None) -> Send:
    return lambda server, _stub, model, values: http_echo(server, model, values, timeout_us)


def _stub(timeout_us: int | None = None, deadline_s: float = 30.0) -> Send:
    return lambda _server, stub, model, values: stub_echo(
        stub, model, values, timeout_us, deadline_s
    )


def _triton_grpc(timeout_us: int | None = None, deadline_s: float = 30.0) -> Send:
    return lambda server, _stub, model, values: triton_grpc_echo(
        server, model, values, timeout_us, deadline_s
    )


def _triton_http(timeout_us: int | None = None) -> Send:
    return lambda server, _stub, model, values: triton_http_echo(server, model, values, timeout_us)


MODELS = ("bounded", "deadline", "budget")


def _values(model: str, index: int, rows: int = 1) -> np.ndarray:
    """Distinct small values per model and request (few loop steps)."""
    return echo_values(rows, 1, start=1000 * (MODELS.index(model) + 1) + 10 * index)


def _assert_serving(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub, model: str
) -> None:
    """Live, and a good request of ``model`` succeeds on both protocols."""
    status, body = server.get("/v2/health/live")
    assert status == 200, body
    values = _values(model, 99, rows=2)
    for outcome in (http_echo(server, model, values), stub_echo(stub, model, values)):
        assert outcome.values is not None, outcome
        np.testing.assert_array_equal(outcome.values, values)


# --- a full queue ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FullQueue:
    """What happened when ``bounded``'s queue overflowed."""

    before: Scrape
    after: Scrape
    burst: list[tuple[np.ndarray, Outcome]]  # five requests sent at once behind the slow one
    refusals: dict[str, Outcome]  # one more by each client while the queue was still full
    depth_after_refusals: float
    executions: dict[int, int]  # runs by batch size during the scenario
    inferences: int  # rows answered during the scenario


BURST: tuple[Send, ...] = (_http(), _stub(), _http(), _triton_grpc(), _triton_http())
BURST_QUEUED = MAX_QUEUE_SIZE
BURST_REFUSED = len(BURST) - MAX_QUEUE_SIZE

REFUSALS: dict[str, tuple[Send, str]] = {
    "http": (_http(), "503"),
    "grpc": (_stub(), "RESOURCE_EXHAUSTED"),
    "triton-http": (_triton_http(), "503"),
    "triton-grpc": (_triton_grpc(), "RESOURCE_EXHAUSTED"),
}


@pytest.fixture(scope="module")
def full_queue(server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub) -> FullQueue:
    """The slow request runs; five requests arrive at once (two fit the queue); then, the queue
    still full, one more by each kind of client."""
    before = scrape(server)
    executions = executions_by_batch_size(server, "bounded")
    inferences = model_stats(server, "bounded")["inference_count"]
    inputs = [_values("bounded", index) for index in range(len(BURST))]
    with Busy(server, "bounded"):
        calls = [
            InThread(functools.partial(send, server, stub, "bounded", values))
            for send, values in zip(BURST, inputs, strict=True)
        ]
        wait_for(
            # Every request of the burst either answered (refused) or waiting.
            lambda: (
                sum(call.done() for call in calls) + queue_depth(server, "bounded") == len(BURST)
            ),
            "the overflow refused and the rest queued",
        )
        refusals = {
            kind: send(server, stub, "bounded", _values("bounded", 50 + index))
            for index, (kind, (send, _)) in enumerate(REFUSALS.items())
        }
        # Still two waiting: every refusal came back while the slow request ran.
        depth = queue_depth(server, "bounded")
    burst = [(values, call.result()) for values, call in zip(inputs, calls, strict=True)]
    return FullQueue(
        before,
        scrape(server),
        burst,
        refusals,
        depth,
        grown(executions, executions_by_batch_size(server, "bounded")),
        model_stats(server, "bounded")["inference_count"] - inferences,
    )


def _refused(outcome: Outcome) -> bool:
    return outcome.code in ("503", "RESOURCE_EXHAUSTED")


def test_exactly_the_overflow_is_refused(full_queue: FullQueue) -> None:
    refused = [outcome for _, outcome in full_queue.burst if _refused(outcome)]
    served = [(values, outcome) for values, outcome in full_queue.burst if not _refused(outcome)]
    assert len(refused) == BURST_REFUSED, full_queue.burst
    assert len(served) == BURST_QUEUED, full_queue.burst
    for values, outcome in served:
        assert outcome.code in ("200", "OK"), outcome
        assert outcome.values is not None
        np.testing.assert_array_equal(outcome.values, values)
    assert full_queue.depth_after_refusals == MAX_QUEUE_SIZE


@pytest.mark.parametrize(("kind", "expected"), [(k, c) for k, (_, c) in REFUSALS.items()])
def test_full_queue_refuses_at_once(full_queue: FullQueue, kind: str, expected: str) -> None:
    outcome = full_queue.refusals[kind]
    assert outcome.code == expected, outcome
    assert "queue is full" in outcome.message, outcome
    assert "bounded" in outcome.message, outcome
    if kind == "http":
        retry_after = outcome.headers.get("retry-after")
        assert retry_after is not None, outcome
        assert retry_after.isdigit(), retry_after
        assert int(retry_after) >= 1


def test_burst_refusals_carry_retry_after(full_queue: FullQueue) -> None:
    for _, outcome in full_queue.burst:
        if outcome.code == "503" and outcome.headers:
            assert int(outcome.headers["retry-after"]) >= 1, outcome


def test_rejections_are_counted(full_queue: FullQueue) -> None:
    def grown_by(name: str, **labels: str) -> float:
        return full_queue.after.value(name, **labels) - full_queue.before.value(name, **labels)

    rejected = grown_by("turnout_queue_rejected_total", endpoint="bounded", version="1")
    assert rejected == BURST_REFUSED + len(REFUSALS)
    overloaded = sum(
        grown_by(
            "turnout_requests_total",
            endpoint="bounded",
            version="1",
            protocol=protocol,
            status="overloaded",
        )
        for protocol in ("http", "grpc")
    )
    assert overloaded == rejected
    assert series(full_queue.after, "turnout_queue_depth", "bounded") == 0
    assert grown_by("turnout_queue_expired_total", endpoint="bounded", version="1") == 0


def test_refused_requests_never_ran(full_queue: FullQueue) -> None:
    # The slow request, and the two queued ones (one run of two rows).
    assert full_queue.inferences == 1 + BURST_QUEUED
    assert full_queue.executions == {1: 1, BURST_QUEUED: 1}


def test_serves_after_a_full_queue(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub, full_queue: FullQueue
) -> None:
    _assert_serving(server, stub, "bounded")


# --- deadlines ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadlineCase:
    """A request sent to ``model`` while its instance is busy, and how it must end."""

    model: str
    send: Send
    code: str  # "504" / "DEADLINE_EXCEEDED", or "200" / "OK" when within its budget
    # Whether the server drops it by its own deadline (counted expired) or the client's
    # deadline may also be seen first as the client going away (expired or abandoned).
    counted_as: tuple[str, ...] = ("turnout_queue_expired_total",)

    @property
    def expires(self) -> bool:
        """Whether the request runs out of time."""
        return self.code not in ("200", "OK")


EITHER = ("turnout_queue_expired_total", "turnout_queue_abandoned_total")
DEADLINE_CASES = {
    "http-timeout-parameter": DeadlineCase("deadline", _http(SHORT_US), "504"),
    "grpc-timeout-parameter": DeadlineCase("deadline", _stub(SHORT_US), "DEADLINE_EXCEEDED"),
    "triton-http-timeout": DeadlineCase("deadline", _triton_http(SHORT_US), "504"),
    "triton-grpc-timeout": DeadlineCase("deadline", _triton_grpc(SHORT_US), "DEADLINE_EXCEEDED"),
    "grpc-client-deadline": DeadlineCase(
        "deadline", _stub(deadline_s=SHORT_US / 1e6), "DEADLINE_EXCEEDED", EITHER
    ),
    "triton-grpc-client-deadline": DeadlineCase(
        "deadline", _triton_grpc(deadline_s=SHORT_US / 1e6), "DEADLINE_EXCEEDED", EITHER
    ),
    "http-within-budget": DeadlineCase("deadline", _http(LONG_US), "200"),
    "grpc-within-budget": DeadlineCase("deadline", _stub(LONG_US, deadline_s=30.0), "OK"),
    "http-model-timeout": DeadlineCase("budget", _http(), "504"),
    "grpc-model-timeout": DeadlineCase("budget", _stub(), "DEADLINE_EXCEEDED"),
    "triton-grpc-model-timeout": DeadlineCase("budget", _triton_grpc(), "DEADLINE_EXCEEDED"),
    # The parameter cannot lengthen the version's own budget: the earliest deadline wins.
    "http-model-timeout-beats-parameter": DeadlineCase("budget", _http(LONG_US), "504"),
}


@dataclass(frozen=True, slots=True)
class DeadlineRun:
    """The cases of one model sent behind its slow request, and what came of them."""

    before: Scrape
    after: Scrape
    executions: dict[int, int]  # runs by batch size during the scenario
    inferences: int  # rows answered during the scenario
    outcomes: dict[str, tuple[np.ndarray, Outcome]]


def _run_deadlines(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub, model: str
) -> DeadlineRun:
    """The slow request of ``model`` runs; every case of that model is sent at once; the ones
    that run out of time are answered while the rest wait; then everything ends."""
    cases = {name: case for name, case in DEADLINE_CASES.items() if case.model == model}
    inputs = {name: _values(model, index) for index, name in enumerate(cases)}
    impatient = [name for name, case in cases.items() if case.expires]
    before = scrape(server)
    executions_before = executions_by_batch_size(server, model)
    count_before = model_stats(server, model)["inference_count"]
    with Busy(server, model):
        calls = {
            name: InThread(functools.partial(case.send, server, stub, model, inputs[name]))
            for name, case in cases.items()
        }
        wait_for(
            lambda: (
                all(calls[name].done() for name in impatient)
                and queue_depth(server, model) == len(cases) - len(impatient)
            ),
            "the expired requests answered and the patient ones waiting",
        )
    outcomes = {name: (inputs[name], call.result()) for name, call in calls.items()}
    return DeadlineRun(
        before,
        scrape(server),
        grown(executions_before, executions_by_batch_size(server, model)),
        model_stats(server, model)["inference_count"] - count_before,
        outcomes,
    )


@pytest.fixture(scope="module")
def deadline_runs(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> dict[str, DeadlineRun]:
    """The deadline cases of ``deadline`` and of ``budget``, one model after the other."""
    return {model: _run_deadlines(server, stub, model) for model in ("deadline", "budget")}


@pytest.mark.parametrize("name", list(DEADLINE_CASES))
def test_deadline_outcome(deadline_runs: dict[str, DeadlineRun], name: str) -> None:
    case = DEADLINE_CASES[name]
    values, outcome = deadline_runs[case.model].outcomes[name]
    assert outcome.code == case.code, outcome
    if case.expires:
        assert outcome.values is None
        if case.counted_as == EITHER:
            # The client's own deadline: whichever side noticed first, the client sees
            # DEADLINE_EXCEEDED; the server's message (if its own answer arrived) names it.
            return
        assert "deadline" in outcome.message, outcome
        assert case.model in outcome.message, outcome
    else:
        assert outcome.values is not None
        np.testing.assert_array_equal(outcome.values, values)


@pytest.mark.parametrize("model", ["deadline", "budget"])
def test_expired_requests_are_counted_and_never_run(
    deadline_runs: dict[str, DeadlineRun], model: str
) -> None:
    run = deadline_runs[model]
    cases = {name: case for name, case in DEADLINE_CASES.items() if case.model == model}
    dropped = sum(
        run.after.value(counter, endpoint=model, version="1")
        - run.before.value(counter, endpoint=model, version="1")
        for counter in EITHER
    )
    expired = series(run.after, "turnout_queue_expired_total", model) - series(
        run.before, "turnout_queue_expired_total", model
    )
    expiring = [case for case in cases.values() if case.expires]
    assert dropped == len(expiring)
    assert expired >= sum(1 for case in expiring if case.counted_as != EITHER)
    assert series(run.after, "turnout_queue_depth", model) == 0
    # Only the slow request and the patient ones ran: those in one batch of their rows.
    patient_rows = sum(
        len(run.outcomes[name][0]) for name, case in cases.items() if not case.expires
    )
    expected = Counter({1: 1})
    if patient_rows:
        expected[patient_rows] += 1
    assert run.executions == expected
    assert run.inferences == 1 + patient_rows


@pytest.mark.parametrize("model", ["deadline", "budget"])
def test_serves_after_deadlines(
    server: TurnoutProcess,
    stub: pb_grpc.GRPCInferenceServiceStub,
    deadline_runs: dict[str, DeadlineRun],
    model: str,
) -> None:
    assert deadline_runs[model].outcomes
    _assert_serving(server, stub, model)


def test_deadline_failures_are_counted_by_protocol(
    deadline_runs: dict[str, DeadlineRun],
) -> None:
    run = deadline_runs["budget"]
    cases = {name: case for name, case in DEADLINE_CASES.items() if case.model == "budget"}
    for protocol, codes in (("http", ("504",)), ("grpc", ("DEADLINE_EXCEEDED",))):
        labels = {"endpoint": "budget", "version": "1", "protocol": protocol}
        counted = run.after.value(
            "turnout_requests_total", status="deadline_exceeded", **labels
        ) - run.before.value("turnout_requests_total", status="deadline_exceeded", **labels)
        assert counted == sum(1 for case in cases.values() if case.code in codes)


def test_a_request_within_the_model_budget_succeeds(
    server: TurnoutProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Idle, a ``budget`` request is answered well within timeout_ms, over both protocols and
    with a ``timeout`` parameter of its own."""
    values = _values("budget", 60, rows=3)
    for outcome in (
        http_echo(server, "budget", values, LONG_US),
        stub_echo(stub, "budget", values, LONG_US),
        triton_grpc_echo(server, "budget", values),
    ):
        assert outcome.code in ("200", "OK"), outcome
        assert outcome.values is not None
        np.testing.assert_array_equal(outcome.values, values)


def test_a_malformed_timeout_parameter_is_refused(server: TurnoutProcess) -> None:
    body = echo_body(_values("deadline", 70), parameters={"timeout": -5})
    reply = post_json(server.http_url, "/v2/models/deadline/infer", body)
    assert reply.status == 400, reply
    assert "timeout" in reply.error()


# --- clients that go away -------------------------------------------------------------------------


def _leave_over_http(server: TurnoutProcess, values: np.ndarray) -> Callable[[], None]:
    """Send a request on a raw connection; returns how to hang up without reading the answer."""
    body = json.dumps(echo_body(values)).encode()
    connection = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    head = (
        "POST /v2/models/deadline/infer HTTP/1.1\r\nHost: turnout\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection.close


def _leave_over_grpc(server: TurnoutProcess, values: np.ndarray) -> Callable[[], None]:
    """Start a ModelInfer call; returns how to cancel it."""
    channel = grpc.insecure_channel(server.grpc_url)
    call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(
        echo_message("deadline", values), timeout=30
    )

    def cancel() -> None:
        call.cancel()
        channel.close()

    return cancel


@pytest.mark.parametrize(
    "leave", [_leave_over_http, _leave_over_grpc], ids=["http-disconnect", "grpc-cancel"]
)
def test_a_client_gone_while_queued_is_dropped_and_counted(
    server: TurnoutProcess,
    stub: pb_grpc.GRPCInferenceServiceStub,
    leave: Callable[[TurnoutProcess, np.ndarray], Callable[[], None]],
) -> None:
    """README: "a request whose client went away while queued is dropped and counted"."""
    before = scrape(server)
    executions = executions_by_batch_size(server, "deadline")

    def abandoned() -> float:
        return series(scrape(server), "turnout_queue_abandoned_total", "deadline") - series(
            before, "turnout_queue_abandoned_total", "deadline"
        )

    with Busy(server, "deadline"):
        hang_up = leave(server, _values("deadline", 80))
        wait_for(lambda: queue_depth(server, "deadline") == 1, "the request queued")
        hang_up()
        # Dropped while the slow request still runs, or else run once it has finished.
        wait_for(
            lambda: abandoned() == 1 or queue_depth(server, "deadline") == 0,
            "the request dropped or run",
        )
    assert abandoned() == 1
    assert grown(executions, executions_by_batch_size(server, "deadline")) == {1: 1}
    _assert_serving(server, stub, "deadline")
