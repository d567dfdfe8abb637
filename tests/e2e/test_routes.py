"""Routes end to end: a canary's split with and without routing keys, blue-green promote and
rollback under load, pinned versions, routes from turnout.yaml, routes and bandit statistics
surviving a restart, and the ``turnout routes`` command line against a real server.

Every endpoint here serves the same two files, the demo classifier with two different seeds, so
each answer can be checked against ONNX Runtime's for the version it names."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support.e2e import assert_mlp_outputs, mlp_reference, scrape, write_config
from tests.support.polling import wait_for
from tests.support.routing import (
    ADMIN_TOKEN,
    TOKEN_VARIABLE,
    Admin,
    Answer,
    HttpSession,
    Load,
    admin_env,
    binomial_bounds,
    grpc_client,
    grpc_feedback,
    grpc_infer,
    http_answer,
    http_client,
    http_infer,
    mlp_inputs,
    string_parameter,
)
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.protos import turnout_pb2_grpc as turnout_grpc

TURNOUT = Path(sys.executable).parent / "turnout"
VERSIONS = ("1", "2")
ENDPOINTS = ("split", "keyed", "blue_green", "pinned", "cli")
CONFIGURED_ROUTES: dict[str, dict[str, Any]] = {
    "configured_fixed": {"policy": "fixed", "version": 1},
    "configured_canary": {"policy": "canary", "weights": {"1": 0, "2": 100}},
    "configured_blue_green": {"policy": "blue_green", "live": 1, "staged": 2},
    "configured_latest": {"policy": "latest"},
}
# Requests of the canary split: 80/20 leaves 5 sigma of room on each side of the count.
SPLIT_REQUESTS = 400
KEYS = tuple(f"user-{index}" for index in range(100))
# Requests each client thread completes in each phase of the blue-green test.
PER_PHASE = 25


def _models(repository: Path, endpoints: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"name": name, "version": int(version), "path": str(_model_file(repository, version))}
        for name in endpoints
        for version in VERSIONS
    ]


def _model_file(repository: Path, version: str) -> Path:
    return repository / "mlp" / version / "model.onnx"


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    """This file's server: versions 1 and 2 of the demo classifier under several endpoints,
    some routed by turnout.yaml, with the admin API on."""
    root = tmp_path_factory.mktemp("routes")
    config = write_config(
        root / "turnout.yaml",
        {
            "models": _models(repository, (*ENDPOINTS, *CONFIGURED_ROUTES)),
            "routes": CONFIGURED_ROUTES,
        },
    )
    with TurnoutProcess(["--config", str(config)], root / "run", env=admin_env()) as process:
        yield process
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture(scope="module")
def admin(server: TurnoutProcess) -> Admin:
    """The admin client of this file's server."""
    return Admin(server)


@pytest.fixture(scope="module")
def stub(server: TurnoutProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Turnout's stub on a channel to this file's server."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def session(server: TurnoutProcess) -> Iterator[HttpSession]:
    """A kept-alive HTTP connection to this file's server."""
    with HttpSession(server.http_url) as kept:
        yield kept


def _assert_answer(repository: Path, answer: Answer, rows: np.ndarray) -> None:
    """The outputs are ONNX Runtime's for the version the answer names."""
    assert answer.version in VERSIONS, answer
    assert_mlp_outputs(answer.outputs, mlp_reference(repository, answer.version, rows))


# --- canary ---------------------------------------------------------------------------------------


def test_canary_without_a_key_splits_by_weight(
    admin: Admin, session: HttpSession, stub: pb_grpc.GRPCInferenceServiceStub, repository: Path
) -> None:
    admin.set_route("split", {"policy": "canary", "weights": {"1": 80, "2": 20}})
    rows = mlp_inputs(1, seed=1)
    answers = [http_answer(http_infer(session, "split", rows)) for _ in range(SPLIT_REQUESTS // 2)]
    answers += [grpc_infer(stub, "split", rows) for _ in range(SPLIT_REQUESTS // 2)]
    counts = Counter(answer.version for answer in answers)
    assert set(counts) <= set(VERSIONS), counts
    low, high = binomial_bounds(SPLIT_REQUESTS, 0.2)
    assert low <= counts["2"] <= high, counts
    for version in VERSIONS:
        _assert_answer(repository, next(a for a in answers if a.version == version), rows)


def _keyed_versions(session: HttpSession, stub: pb_grpc.GRPCInferenceServiceStub) -> list[str]:
    """The version each key gets, checked to be the same by every way of giving the key: the
    HTTP header (twice), gRPC metadata, and the ``routing_key`` parameter of either protocol."""
    rows = mlp_inputs(1, seed=2)
    chosen = []
    for key in KEYS:
        seen = {
            "header": http_answer(http_infer(session, "keyed", rows, key=key)).version,
            "header again": http_answer(http_infer(session, "keyed", rows, key=key)).version,
            "metadata": grpc_infer(stub, "keyed", rows, key=key).version,
            "http parameter": http_answer(
                http_infer(session, "keyed", rows, parameters={"routing_key": key})
            ).version,
            "grpc parameter": grpc_infer(
                stub, "keyed", rows, parameters={"routing_key": string_parameter(key)}
            ).version,
        }
        assert len(set(seen.values())) == 1, (key, seen)
        chosen.append(seen["header"])
    return chosen


def test_routing_key_is_sticky_and_raising_the_canary_moves_keys_only_onto_it(
    admin: Admin, session: HttpSession, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    admin.set_route("keyed", {"policy": "canary", "weights": {"1": 80, "2": 20}})
    at_20 = _keyed_versions(session, stub)
    low, high = binomial_bounds(len(KEYS), 0.2)
    assert low <= at_20.count("2") <= high, Counter(at_20)

    admin.set_route("keyed", {"policy": "canary", "weights": {"1": 50, "2": 50}})
    at_50 = _keyed_versions(session, stub)
    moved = [(before, after) for before, after in zip(at_20, at_50, strict=True) if before != after]
    assert moved, "raising the canary to 50 % moved no key"
    assert set(moved) == {("1", "2")}, moved  # onto the canary, never off it
    low, high = binomial_bounds(len(KEYS), 0.5)
    assert low <= at_50.count("2") <= high, Counter(at_50)

    # Back to 20 %: every key is where it was.
    admin.set_route("keyed", {"policy": "canary", "weights": {"1": 80, "2": 20}})
    assert _keyed_versions(session, stub) == at_20

    # The transport's key wins over the parameter.
    on_1, on_2 = KEYS[at_20.index("1")], KEYS[at_20.index("2")]
    rows = mlp_inputs(1, seed=3)
    for key, other in ((on_1, on_2), (on_2, on_1)):
        expected = at_20[KEYS.index(key)]
        by_header = http_infer(session, "keyed", rows, key=key, parameters={"routing_key": other})
        assert http_answer(by_header).version == expected
        by_metadata = grpc_infer(
            stub, "keyed", rows, key=key, parameters={"routing_key": string_parameter(other)}
        )
        assert by_metadata.version == expected


# --- blue-green under load ------------------------------------------------------------------------


def _load_rows(index: int) -> np.ndarray:
    return mlp_inputs(2, seed=100 + index)


def _each_client_answered(load: Load, since: float, what: str) -> None:
    def enough() -> bool:
        return min(load.answered_since(since).values()) >= PER_PHASE

    wait_for(enough, f"{PER_PHASE} answered requests per client {what}", timeout_s=20)


def test_blue_green_promote_and_rollback_under_load_fail_no_request(
    server: TurnoutProcess, admin: Admin, repository: Path
) -> None:
    admin.set_route("blue_green", {"policy": "blue_green", "live": "1", "staged": "2"})
    clients = {
        "http-a": http_client("blue_green"),
        "http-b": http_client("blue_green"),
        "grpc-a": grpc_client("blue_green"),
        "grpc-b": grpc_client("blue_green"),
    }
    # (change sent, change answered, live version after it)
    phases = [(0.0, time.monotonic(), "1")]
    with Load(server, clients, _load_rows) as load:
        for action, live in (
            ("promote", "2"),
            ("promote", "1"),
            ("rollback", "2"),
            ("rollback", "1"),
            (None, ""),
        ):
            _each_client_answered(load, since=phases[-1][1], what=f"before {action} to {live}")
            if action is None:
                break
            sent_at = time.monotonic()
            described = admin.ok("POST", f"/admin/routes/blue_green/{action}")
            phases.append((sent_at, time.monotonic(), live))
            assert described["route"]["live"] == live, described
        sent = load.stop()

    failed = [s for s in sent if s.answer is None]
    assert not failed, failed[:5]
    boundaries = [*phases[1:], (float("inf"), float("inf"), "")]
    for (_, answered, live), (next_sent, _, _) in zip(phases, boundaries, strict=True):
        within = [s for s in sent if s.started > answered and s.finished < next_sent]
        assert {s.client for s in within} == set(clients), (live, len(within))
        # Sent after the change was answered, answered before the next began: the new live.
        assert {s.answer.version for s in within if s.answer} == {live}, live
    for index in range(len(clients)):
        rows = _load_rows(index)
        for version in VERSIONS:
            answer = next(
                s.answer
                for s in sent
                if s.answer and s.answer.version == version and np.array_equal(s.rows, rows)
            )
            _assert_answer(repository, answer, rows)
    audit = admin.audit(limit=4)
    assert [entry["action"] for entry in audit] == ["promote", "promote", "rollback", "rollback"]


# --- pinned versions ------------------------------------------------------------------------------

PINNED_ROUTES = [
    pytest.param({"policy": "fixed", "version": "1"}, id="fixed"),
    pytest.param({"policy": "canary", "weights": {"1": 100, "2": 0}}, id="canary"),
    pytest.param({"policy": "blue_green", "live": "1", "staged": "2"}, id="blue-green"),
    pytest.param({"policy": "bandit", "arms": ["1", "2"]}, id="bandit"),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "steps": [10, 100]}, id="rollout"
    ),
    pytest.param({"policy": "latest"}, id="latest"),
]


@pytest.mark.parametrize("route", PINNED_ROUTES)
def test_pinned_version_bypasses_the_route(
    server: TurnoutProcess,
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    repository: Path,
    route: dict[str, Any],
) -> None:
    admin.set_route("pinned", route)
    before = admin.route("pinned")
    rows = mlp_inputs(3, seed=4)
    for version in VERSIONS:
        for _ in range(3):
            answers = [
                http_answer(http_infer(session, "pinned", rows, version=version)),
                http_answer(http_infer(session, "pinned", rows, version=version, key="user-1")),
                grpc_infer(stub, "pinned", rows, version=version),
                grpc_infer(stub, "pinned", rows, version=version, key="user-1"),
            ]
            for answer in answers:
                assert answer.version == version, (route, answer.version)
                _assert_answer(repository, answer, rows)
    # Pinned requests are no bandit pulls and no rollout traffic: the route's state is as before.
    assert admin.route("pinned") == before
    reply = http_infer(session, "pinned", rows, version="3")
    assert reply.status == 404, reply
    with pytest.raises(grpc.RpcError) as caught:
        grpc_infer(stub, "pinned", rows, version="3")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# --- routes from the config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "version"),
    [
        pytest.param("configured_fixed", "1", id="fixed"),
        pytest.param("configured_canary", "2", id="canary"),
        pytest.param("configured_blue_green", "1", id="blue-green"),
        pytest.param("configured_latest", "2", id="latest"),
    ],
)
def test_route_from_turnout_yaml_applies_at_start(
    server: TurnoutProcess,
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    endpoint: str,
    version: str,
) -> None:
    configured = json.loads(json.dumps(CONFIGURED_ROUTES[endpoint]))
    shown = admin.route(endpoint)["route"]
    assert shown["policy"] == configured["policy"]
    for field in ("version", "live", "staged"):
        if field in configured:
            assert shown[field] == str(configured[field])
    if "weights" in configured:
        assert shown["weights"] == {k: float(v) for k, v in configured["weights"].items()}
    info = scrape(server).find("turnout_route_info", endpoint=endpoint)
    assert [(s.labels["policy"], s.value) for s in info] == [(configured["policy"], 1.0)]
    rows = mlp_inputs(1, seed=5)
    for _ in range(10):
        assert http_answer(http_infer(session, endpoint, rows)).version == version
        assert grpc_infer(stub, endpoint, rows).version == version
    assert f"endpoint '{endpoint}' routes to version {version}" in server.logs()


# --- persistence ----------------------------------------------------------------------------------


def _persisted_server(repository: Path, root: Path, run: str, state_dir: Path) -> TurnoutProcess:
    config = write_config(
        root / "turnout.yaml",
        {
            "models": _models(repository, ("mlp", "arms")),
            "routes": {"mlp": {"policy": "fixed", "version": 1}},
        },
    )
    return TurnoutProcess(
        ["--config", str(config), "--state-dir", str(state_dir)], root / run, env=admin_env()
    )


def _bandit_metrics(server: TurnoutProcess, endpoint: str) -> dict[str, tuple[float, float]]:
    metrics = scrape(server)
    return {
        arm: (
            metrics.value("turnout_bandit_pulls_total", endpoint=endpoint, arm=arm),
            metrics.value("turnout_bandit_rewards_total", endpoint=endpoint, arm=arm),
        )
        for arm in VERSIONS
    }


def test_routes_history_and_bandit_statistics_survive_a_restart(
    repository: Path, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    rows = mlp_inputs(1, seed=6)
    canary = {"policy": "canary", "weights": {"1": 70.0, "2": 30.0}}
    bandit = {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]}
    with _persisted_server(repository, tmp_path, "first", state_dir) as first:
        admin = Admin(first)
        admin.set_route("mlp", {"policy": "fixed", "version": "2"})
        admin.set_route("mlp", canary)
        admin.set_route("arms", bandit)
        with grpc.insecure_channel(first.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            rewards = turnout_grpc.FeedbackStub(channel)
            for _ in range(30):
                answer = grpc_infer(stub, "arms", rows)
                reward = 1.0 if answer.version == "2" else 0.0
                assert grpc_feedback(rewards, "arms", answer.request_id, reward) == (
                    "OK",
                    answer.version,
                )
        learned = admin.route("arms")["bandit"]
        assert sum(arm["pulls"] for arm in learned.values()) == 30, learned
        assert sum(arm["rewards"] for arm in learned.values()) == 30, learned
        audit = admin.audit()
        assert first.stop() == 0, first.logs()
    assert {"routes.json", "bandits.json", "audit.jsonl"} <= {p.name for p in state_dir.iterdir()}

    with _persisted_server(repository, tmp_path, "second", state_dir) as second:
        admin = Admin(second)
        assert admin.route("mlp")["route"] == canary
        restored = admin.route("arms")
        assert restored["route"] == bandit
        assert restored["bandit"] == learned
        assert _bandit_metrics(second, "arms") == {
            arm: (float(learned[arm]["pulls"]), float(learned[arm]["rewards"])) for arm in VERSIONS
        }
        assert admin.audit() == audit
        # The history came back too: rollback goes to fixed 2, then to the config's fixed 1.
        with HttpSession(second.http_url) as session:
            for version in ("2", "1"):
                assert admin.rollback("mlp")["route"] == {"policy": "fixed", "version": version}
                answer = http_answer(http_infer(session, "mlp", rows))
                assert answer.version == version
        reply = admin.call("POST", "/admin/routes/mlp/rollback")
        assert reply.status == 400, reply
        assert "earlier route" in reply.error()
        assert second.stop() == 0, second.logs()
        assert "Traceback" not in second.logs(), second.logs()


# --- the command line -----------------------------------------------------------------------------


def _routes_cli(
    server: TurnoutProcess, *args: str, token: str | None = ADMIN_TOKEN, env_token: str = ""
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    if env_token:
        environment[TOKEN_VARIABLE] = env_token
    command = [str(TURNOUT), "routes", "--url", f"http://{server.http_url}"]
    if token is not None:
        command += ["--token", token]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


def _json_out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result
    return json.loads(result.stdout)


def test_routes_cli_changes_and_reads_the_real_server(
    server: TurnoutProcess, admin: Admin, session: HttpSession
) -> None:
    listed = _json_out(_routes_cli(server, "list"))["routes"]
    assert set(listed) == {*ENDPOINTS, *CONFIGURED_ROUTES}

    canary = {"policy": "canary", "weights": {"1": 80.0, "2": 20.0}}
    assert _json_out(_routes_cli(server, "set", "cli", "canary", "1=80", "2=20"))["route"] == canary
    assert _json_out(_routes_cli(server, "get", "cli"))["route"] == canary
    promoted = {"policy": "canary", "weights": {"1": 0.0, "2": 100.0}}
    assert _json_out(_routes_cli(server, "promote", "cli"))["route"] == promoted
    rows = mlp_inputs(1, seed=7)
    assert http_answer(http_infer(session, "cli", rows)).version == "2"
    assert _json_out(_routes_cli(server, "rollback", "cli"))["route"] == canary

    blue_green = _routes_cli(server, "set", "cli", "blue_green", "live=1", "staged=2")
    assert _json_out(blue_green)["route"] == {"policy": "blue_green", "live": "1", "staged": "2"}
    route = {"policy": "bandit", "algorithm": "epsilon_greedy", "arms": ["1", "2"], "epsilon": 0.2}
    by_json = _routes_cli(server, "set", "cli", "--json", json.dumps(route))
    assert _json_out(by_json)["route"] == route
    by_fields = _routes_cli(server, "set", "cli", "bandit", "algorithm=thompson", "arms=1,2")
    assert _json_out(by_fields)["route"] == {
        "policy": "bandit",
        "algorithm": "thompson",
        "arms": ["1", "2"],
    }
    for version in VERSIONS:
        http_answer(http_infer(session, "cli", rows, version=version))
    report = _routes_cli(server, "report", "cli")
    assert report.returncode == 0, report
    lines = report.stdout.splitlines()
    assert lines[0] == "endpoint cli"
    assert [line.split()[0] for line in lines[2:4]] == ["1", "2"]
    assert "1 vs 2" in lines
    assert "  rewards:    not enough data yet (no rewards for one version)" in lines

    # The token may come from the environment instead.
    by_env = _routes_cli(
        server, "set", "cli", "fixed", "version=1", token=None, env_token=ADMIN_TOKEN
    )
    assert _json_out(by_env)["route"] == {"policy": "fixed", "version": "1"}
    assert admin.route("cli")["route"] == {"policy": "fixed", "version": "1"}

    entries = _json_out(_routes_cli(server, "audit", "--limit", "7"))["entries"]
    assert [e["action"] for e in entries] == [
        "set", "promote", "rollback", "set", "set", "set", "set"
    ]  # fmt: skip
    assert {(e["who"], e["endpoint"]) for e in entries} == {("env", "cli")}


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        pytest.param(("get", "nope"), ADMIN_TOKEN, "404", id="unknown-endpoint"),
        pytest.param(
            ("set", "cli", "fixed", "version=9"), ADMIN_TOKEN, "400", id="unknown-version"
        ),
        pytest.param(
            ("set", "cli", "canary", "1=-5", "2=10"), ADMIN_TOKEN, "weights", id="negative-weight"
        ),
        pytest.param(("set", "cli", "--json", "{bad"), ADMIN_TOKEN, "JSON", id="malformed-json"),
        pytest.param(("set", "cli"), ADMIN_TOKEN, "policy", id="no-policy"),
        pytest.param(
            ("set", "cli", "fixed", "version"), ADMIN_TOKEN, "KEY=VALUE", id="not-key-value"
        ),
        pytest.param(("promote", "configured_fixed"), ADMIN_TOKEN, "400", id="nothing-to-promote"),
        pytest.param(("list",), "wrong-token", "401", id="wrong-token"),
    ],
)
def test_routes_cli_exits_1_when_refused(
    server: TurnoutProcess, admin: Admin, args: tuple[str, ...], token: str, message: str
) -> None:
    before = admin.ok("GET", "/admin/routes"), admin.audit()
    result = _routes_cli(server, *args, token=token)
    assert result.returncode == 1, result
    assert message in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    assert (admin.ok("GET", "/admin/routes"), admin.audit()) == before


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        pytest.param(("set", "cli", "fixed", "version=2"), None, TOKEN_VARIABLE, id="no-token"),
        pytest.param(("frobnicate", "cli"), ADMIN_TOKEN, "invalid choice", id="unknown-action"),
        pytest.param(("get",), ADMIN_TOKEN, "endpoint", id="missing-argument"),
    ],
)
def test_routes_cli_exits_2_without_a_token_or_on_bad_usage(
    server: TurnoutProcess, admin: Admin, args: tuple[str, ...], token: str | None, message: str
) -> None:
    before = admin.ok("GET", "/admin/routes"), admin.audit()
    result = _routes_cli(server, *args, token=token)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert (admin.ok("GET", "/admin/routes"), admin.audit()) == before
