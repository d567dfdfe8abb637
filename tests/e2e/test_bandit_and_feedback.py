"""Bandit routes and rewards end to end: thompson and epsilon-greedy bandits over two versions
converge on the one that earns more (rewards fed back over HTTP and over gRPC), requests without
an id get one, every way a reward is refused, the memory of served ids, and the A/B report with
its verdicts.

The simulated client rewards version 2 with probability 0.8 and version 1 with 0.2, drawing from
its own seeded generator; the bounds on what the bandits do leave far more than 5 sigma."""

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support.e2e import scrape, write_config
from tests.support.rawhttp import request
from tests.support.routing import (
    Admin,
    Answer,
    HttpSession,
    admin_env,
    grpc_feedback,
    grpc_infer,
    http_answer,
    http_feedback,
    http_infer,
    mlp_inputs,
)
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.protos import turnout_pb2_grpc as turnout_grpc

VERSIONS = ("1", "2")
REWARD_PROBABILITY = {"1": 0.2, "2": 0.8}
EPSILON = 0.2
ROUTES: dict[str, dict[str, Any]] = {
    "thompson_http": {"policy": "bandit", "algorithm": "thompson", "arms": [1, 2]},
    "thompson_grpc": {"policy": "bandit", "algorithm": "thompson", "arms": [1, 2]},
    "greedy_http": {
        "policy": "bandit",
        "algorithm": "epsilon_greedy",
        "arms": [1, 2],
        "epsilon": EPSILON,
    },
    "greedy_grpc": {
        "policy": "bandit",
        "algorithm": "epsilon_greedy",
        "arms": [1, 2],
        "epsilon": EPSILON,
    },
    "ids": {"policy": "bandit", "arms": [1, 2]},
    "binary": {"policy": "bandit", "arms": [1, 2]},
    "real": {"policy": "bandit", "arms": [1, 2], "reward": "real"},
    "plain": {"policy": "fixed", "version": 1},
    "ab": {"policy": "canary", "weights": {"1": 50, "2": 50}},
    "ab_real": {"policy": "canary", "weights": {"1": 50, "2": 50}},
    "other": {"policy": "fixed", "version": 1},
}
# Requests per convergence run, and how many of the last of them the check looks at. By the
# start of that tail epsilon-greedy has explored version 2 about 30 times; once converged it
# sends 90 % there, thompson nearly all: 70 of the last 100 is 6.7 sigma below epsilon-greedy's
# mean and far below thompson's.
CONVERGENCE_REQUESTS = 400
TAIL = 100
TAIL_MINIMUM = 70


@pytest.fixture(scope="module")
def bandit_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TurnoutProcess]:
    """This file's server: the demo classifier's two versions under every endpoint of ROUTES."""
    root = tmp_path_factory.mktemp("bandit")
    models = [
        {"name": name, "version": int(v), "path": str(repository / "mlp" / v / "model.onnx")}
        for name in ROUTES
        for v in VERSIONS
    ]
    config = write_config(root / "turnout.yaml", {"models": models, "routes": ROUTES})
    with TurnoutProcess(["--config", str(config)], root / "run", env=admin_env()) as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture(scope="module")
def admin(bandit_server: TurnoutProcess) -> Admin:
    """The admin client of this file's server."""
    return Admin(bandit_server)


@pytest.fixture(scope="module")
def channel(bandit_server: TurnoutProcess) -> Iterator[grpc.Channel]:
    """A gRPC channel to this file's server."""
    with grpc.insecure_channel(bandit_server.grpc_url) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    """Turnout's inference stub."""
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def rewards(channel: grpc.Channel) -> turnout_grpc.FeedbackStub:
    """Turnout's Feedback stub."""
    return turnout_grpc.FeedbackStub(channel)


@pytest.fixture
def session(bandit_server: TurnoutProcess) -> Iterator[HttpSession]:
    """A kept-alive HTTP connection to this file's server."""
    with HttpSession(bandit_server.http_url) as kept:
        yield kept


@dataclass(frozen=True, slots=True)
class Transport:
    """Inference and rewards over one protocol: ``infer(endpoint, rows, request_id, version)``
    and ``reward(endpoint, request_id, reward)`` → (status name, version or message)."""

    name: str
    infer: Callable[[str, np.ndarray, str, str], Answer]
    reward: Callable[[str, str, Any], tuple[str, str]]


HTTP_CODES = {200: "OK", 400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}


def _http_reward(
    server: TurnoutProcess, endpoint: str, request_id: str, reward: Any
) -> tuple[str, str]:
    reply = http_feedback(server.http_url, endpoint, {"request_id": request_id, "reward": reward})
    code = HTTP_CODES.get(reply.status, str(reply.status))
    if reply.status != 200:
        return code, reply.error()
    document = reply.json()
    assert document["model_name"] == endpoint, document
    assert document["request_id"] == request_id, document
    return code, str(document["model_version"])


@pytest.fixture(params=["http", "grpc"])
def transport(
    request: pytest.FixtureRequest,
    bandit_server: TurnoutProcess,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    rewards: turnout_grpc.FeedbackStub,
) -> Transport:
    """Inference and rewards over HTTP or over gRPC."""
    if request.param == "http":
        return Transport(
            "http",
            lambda endpoint, rows, request_id, version: http_answer(
                http_infer(
                    session,
                    endpoint,
                    rows,
                    request_id=request_id or None,
                    version=version or None,
                )
            ),
            lambda endpoint, request_id, reward: _http_reward(
                bandit_server, endpoint, request_id, reward
            ),
        )
    return Transport(
        "grpc",
        lambda endpoint, rows, request_id, version: grpc_infer(
            stub, endpoint, rows, request_id=request_id, version=version
        ),
        lambda endpoint, request_id, reward: grpc_feedback(rewards, endpoint, request_id, reward),
    )


# --- convergence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm",
    [pytest.param("thompson", id="thompson"), pytest.param("greedy", id="epsilon-greedy")],
)
def test_bandit_converges_on_the_version_that_earns_more(
    bandit_server: TurnoutProcess, admin: Admin, transport: Transport, algorithm: str
) -> None:
    endpoint = f"{algorithm}_{transport.name}"
    client = np.random.default_rng(list(endpoint.encode()))
    rows = mlp_inputs(1, seed=8)
    chosen: list[str] = []
    pulls: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for _ in range(CONVERGENCE_REQUESTS):
        answer = transport.infer(endpoint, rows, "", "")
        assert answer.request_id, answer  # the bandit gave the request an id
        reward = 1 if client.random() < REWARD_PROBABILITY[answer.version] else 0
        assert transport.reward(endpoint, answer.request_id, reward) == ("OK", answer.version)
        chosen.append(answer.version)
        pulls[answer.version] += 1
        totals[answer.version] += reward

    tail = chosen[-TAIL:]
    assert tail.count("2") >= TAIL_MINIMUM, Counter(tail)
    # The statistics are exactly what the client saw and sent.
    stats = admin.route(endpoint)["bandit"]
    assert set(stats) == set(VERSIONS), stats
    for arm in VERSIONS:
        assert stats[arm]["pulls"] == pulls[arm], (arm, stats)
        assert stats[arm]["rewards"] == pulls[arm], (arm, stats)
        assert stats[arm]["total"] == totals[arm], (arm, stats)
        assert math.isclose(stats[arm]["estimate"], totals[arm] / max(pulls[arm], 1))
    assert stats["2"]["estimate"] > stats["1"]["estimate"], stats
    metrics = scrape(bandit_server)
    for arm in VERSIONS:
        labels = {"endpoint": endpoint, "arm": arm}
        assert metrics.value("turnout_bandit_pulls_total", **labels) == pulls[arm]
        assert metrics.value("turnout_bandit_rewards_total", **labels) == pulls[arm]
        assert math.isclose(
            metrics.value("turnout_bandit_reward_estimate", **labels), stats[arm]["estimate"]
        )
    assert metrics.value("turnout_route_info", endpoint=endpoint, policy="bandit") == 1


# --- request ids ----------------------------------------------------------------------------------


def test_bandit_gives_requests_without_an_id_one_and_echoes_given_ones(
    transport: Transport,
) -> None:
    rows = mlp_inputs(1, seed=9)
    given = [transport.infer("ids", rows, "", "").request_id for _ in range(20)]
    assert all(given), given
    assert len(set(given)) == len(given), given
    assert transport.infer("ids", rows, "my-request-7", "").request_id == "my-request-7"
    # Other routes leave an absent id absent.
    assert transport.infer("plain", rows, "", "").request_id == ""
    assert transport.infer("plain", rows, "mine", "").request_id == "mine"
    # The id the bandit gave takes a reward.
    assert transport.reward("ids", given[-1], 1)[0] == "OK"


# --- refused rewards ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """A reward refused: to which endpoint, for which id (``served`` names one just answered),
    with what value, the status, and what the message says."""

    endpoint: str
    request_id: str
    reward: Any
    code: str
    says: str


SERVED = "<served>"

REFUSED_REWARDS = [
    pytest.param(
        Refusal("binary", "never-served", 1, "NOT_FOUND", "never-served"), id="unknown-id"
    ),
    pytest.param(Refusal("nope", SERVED, 1, "NOT_FOUND", "nope"), id="unknown-endpoint"),
    pytest.param(Refusal("other", SERVED, 1, "NOT_FOUND", "other"), id="id-of-another-endpoint"),
    pytest.param(Refusal("binary", SERVED, 0.5, "INVALID_ARGUMENT", "0 or 1"), id="binary-half"),
    pytest.param(Refusal("binary", SERVED, 2, "INVALID_ARGUMENT", "0 or 1"), id="binary-two"),
    pytest.param(Refusal("binary", SERVED, -1, "INVALID_ARGUMENT", "0 or 1"), id="binary-minus-1"),
    pytest.param(Refusal("binary", "", 1, "INVALID_ARGUMENT", "request_id"), id="empty-id"),
]


@pytest.mark.parametrize("refusal", REFUSED_REWARDS)
def test_reward_is_refused(transport: Transport, admin: Admin, refusal: Refusal) -> None:
    rows = mlp_inputs(1, seed=10)
    served = transport.infer("binary", rows, "", "")
    request_id = served.request_id if refusal.request_id == SERVED else refusal.request_id
    before = admin.route("binary")["bandit"]
    code, message = transport.reward(refusal.endpoint, request_id, refusal.reward)
    assert code == refusal.code, message
    assert refusal.says in message, message
    assert admin.route("binary")["bandit"] == before
    # The id served is still there for a good reward, once.
    assert transport.reward("binary", served.request_id, 1) == ("OK", served.version)
    code, message = transport.reward("binary", served.request_id, 1)
    assert code == "ALREADY_EXISTS", message
    assert served.request_id in message


@pytest.mark.parametrize(
    "reward",
    [
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="infinity"),
        pytest.param(-math.inf, id="minus-infinity"),
    ],
)
def test_grpc_reward_must_be_finite(
    stub: pb_grpc.GRPCInferenceServiceStub, rewards: turnout_grpc.FeedbackStub, reward: float
) -> None:
    rows = mlp_inputs(1, seed=11)
    for endpoint in ("real", "plain"):
        served = grpc_infer(stub, endpoint, rows, request_id=f"finite-{reward}-{endpoint}")
        code, message = grpc_feedback(rewards, endpoint, served.request_id, reward)
        assert code == "INVALID_ARGUMENT", message
        assert "finite" in message
        assert grpc_feedback(rewards, endpoint, served.request_id, 0.5) == ("OK", served.version)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(b'{"request_id": "x", "reward": "1"}', "reward", id="reward-as-text"),
        pytest.param(b'{"request_id": "x", "reward": true}', "reward", id="reward-boolean"),
        pytest.param(b'{"request_id": "x", "reward": null}', "reward", id="reward-null"),
        pytest.param(b'{"request_id": "x"}', "reward", id="no-reward"),
        pytest.param(b'{"reward": 1}', "request_id", id="no-id"),
        pytest.param(b'{"request_id": 7, "reward": 1}', "request_id", id="id-a-number"),
        pytest.param(b'{"request_id": "x", "reward": NaN}', "JSON", id="nan"),
        pytest.param(b'{"request_id": "x", "reward": 1e999}', "JSON", id="overflowing"),
        pytest.param(b'{"request_id": "x", ', "JSON", id="malformed-json"),
        pytest.param(b'[{"request_id": "x", "reward": 1}]', "object", id="not-an-object"),
    ],
)
def test_http_reward_body_is_checked(bandit_server: TurnoutProcess, body: bytes, says: str) -> None:
    for endpoint in ("plain", "real"):
        reply = request(
            bandit_server.http_url,
            "POST",
            f"/v2/models/{endpoint}/feedback",
            body,
            {"Content-Type": "application/json"},
        )
        assert reply.status == 400, reply
        assert says in reply.error()


def test_real_and_non_bandit_routes_take_any_finite_reward(transport: Transport) -> None:
    rows = mlp_inputs(1, seed=12)
    for index, (endpoint, reward) in enumerate(
        (("real", 0.25), ("real", -3.5), ("plain", 0.75), ("plain", 42))
    ):
        served = transport.infer(endpoint, rows, f"any-reward-{index}", "")
        assert transport.reward(endpoint, served.request_id, reward) == ("OK", served.version)


def test_rewards_need_no_token_nor_the_admin_api(server: TurnoutProcess) -> None:
    """The shared server has no admin token: rewards work there all the same."""
    with HttpSession(server.http_url) as session:
        served = http_answer(http_infer(session, "mlp", mlp_inputs(1, seed=13), request_id="r-1"))
    reply = http_feedback(server.http_url, "mlp", {"request_id": "r-1", "reward": 1})
    assert reply.status == 200, reply
    assert reply.json() == {
        "model_name": "mlp",
        "model_version": served.version,
        "request_id": "r-1",
    }


def test_served_ids_beyond_max_entries_are_forgotten_oldest_first(
    repository: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "turnout.yaml",
        {
            "models": [
                {"name": "mlp", "version": 1, "path": str(repository / "mlp" / "1" / "model.onnx")}
            ],
            "feedback": {"max_entries": 3},
        },
    )
    with TurnoutProcess(["--config", str(config)], tmp_path / "run") as process:
        with HttpSession(process.http_url) as session:
            for request_id in ("a", "b", "c", "d"):
                http_answer(
                    http_infer(session, "mlp", mlp_inputs(1, seed=14), request_id=request_id)
                )
        assert _http_reward(process, "mlp", "a", 1)[0] == "NOT_FOUND"
        for request_id in ("b", "c", "d"):
            assert _http_reward(process, "mlp", request_id, 1) == ("OK", "1")
        assert process.stop() == 0, process.logs()


# --- the A/B report -------------------------------------------------------------------------------


def _reward_pinned(
    server: TurnoutProcess,
    session: HttpSession,
    endpoint: str,
    rewards_by_version: dict[str, list[float]],
    tag: str,
) -> None:
    """Requests pinned to each version, each then rewarded with the next of its values."""
    rows = mlp_inputs(1, seed=15)
    for version, values in rewards_by_version.items():
        for index, value in enumerate(values):
            request_id = f"{tag}-{version}-{index}"
            answer = http_answer(
                http_infer(session, endpoint, rows, version=version, request_id=request_id)
            )
            assert answer.version == version
            assert _http_reward(server, endpoint, request_id, value) == ("OK", version)


@dataclass(frozen=True, slots=True)
class Experiment:
    """Rewards for an A/B report: a few at first, then enough to make the difference clear."""

    endpoint: str
    test: str
    early: dict[str, list[float]]
    clear: dict[str, list[float]]


EXPERIMENTS = [
    pytest.param(
        Experiment(
            "ab",
            "two-proportion z-test",
            {"1": [1.0, 0.0, 0.0], "2": [1.0, 1.0, 0.0]},
            {"1": [1.0] * 20 + [0.0] * 80, "2": [1.0] * 80 + [0.0] * 20},
        ),
        id="binary-rewards",
    ),
    pytest.param(
        Experiment(
            "ab_real",
            "Welch's t-test",
            {"1": [0.0, 0.6, 0.3], "2": [0.2, 0.8, 0.5]},
            {"1": [0.1, 0.2, 0.3] * 20, "2": [0.7, 0.8, 0.9] * 20},
        ),
        id="real-rewards",
    ),
]


def _check_versions(report: dict[str, Any], rewards_by_version: dict[str, list[float]]) -> None:
    assert list(report["versions"]) == list(VERSIONS), report
    for version, values in rewards_by_version.items():
        row = report["versions"][version]
        assert row["requests"] == len(values), row
        assert row["errors"] == 0, row
        assert row["error_rate"] == 0, row
        latency = row["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"], row
        rewards = row["rewards"]
        assert rewards["count"] == len(values), row
        mean = sum(values) / len(values)
        assert math.isclose(rewards["mean"], mean), row
        low, high = rewards["interval_95"]
        assert low <= mean <= high, row


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_ab_report_shows_rewards_and_says_better_once_the_data_is_clear(
    bandit_server: TurnoutProcess,
    admin: Admin,
    session: HttpSession,
    experiment: Experiment,
) -> None:
    endpoint = experiment.endpoint
    _reward_pinned(bandit_server, session, endpoint, experiment.early, "early")
    report = admin.report(endpoint)
    assert report["endpoint"] == endpoint
    _check_versions(report, experiment.early)
    [comparison] = report["comparisons"]
    assert comparison["versions"] == ["1", "2"]
    assert comparison["reward"]["test"] == experiment.test
    assert comparison["reward"]["p_value"] > 0.05, comparison
    assert comparison["reward"]["verdict"].startswith("not enough data yet (need about "), (
        comparison
    )
    assert comparison["error_rate"]["verdict"] == "no difference detected", comparison

    _reward_pinned(bandit_server, session, endpoint, experiment.clear, "clear")
    report = admin.report(endpoint)
    everything = {v: experiment.early[v] + experiment.clear[v] for v in VERSIONS}
    _check_versions(report, everything)
    [comparison] = report["comparisons"]
    reward = comparison["reward"]
    assert reward["test"] == experiment.test
    assert reward["verdict"] == "2 is better than 1 at 95%", comparison
    assert reward["p_value"] < 1e-6, comparison
    assert reward["statistic"] < 0, comparison  # version 1's mean minus version 2's
    if experiment.test == "two-proportion z-test":
        successes = [sum(everything[v]) for v in VERSIONS]
        counts = [len(everything[v]) for v in VERSIONS]
        pooled = sum(successes) / sum(counts)
        spread = math.sqrt(pooled * (1 - pooled) * (1 / counts[0] + 1 / counts[1]))
        z = (successes[0] / counts[0] - successes[1] / counts[1]) / spread
        assert math.isclose(reward["statistic"], z, rel_tol=1e-9), (reward, z)
