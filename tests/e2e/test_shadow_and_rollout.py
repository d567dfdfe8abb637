"""Shadow traffic and guarded rollouts end to end.

Shadow: the primary answers alone, with the outputs it gives without a shadow, and without
waiting for a slow shadow (observed: primaries answered while their shadows were still queued
or running); a failing shadow's errors and the copies dropped beyond ``max_inflight`` are
counted; a shadow that is another version of the classifier is compared with the primary (the
largest absolute difference and the top-1 agreement, checked against ONNX Runtime's outputs of
both versions); ``rate`` samples; pinned requests are never mirrored.

Guarded rollout: a healthy canary steps up to 100 % and completes, audited step by step; a slow
canary (its p99 far above the stable's) is rolled back on its own, and all traffic then goes to
the stable version."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support.batching_models import BUSY_STEPS, busy_mlp_rows, slow_mlp
from tests.support.e2e import run_onnx, scrape, write_config
from tests.support.onnx_models import write_model
from tests.support.polling import wait_for
from tests.support.routing import (
    Admin,
    HttpSession,
    Load,
    admin_env,
    binomial_bounds,
    failing_mlp,
    grpc_client,
    grpc_infer,
    http_answer,
    http_client,
    http_infer,
    mlp_inputs,
    write_mlp,
)
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2_grpc as pb_grpc

# Loop steps of a request that keeps the slow version busy for about a tenth of a second; the
# stable version answers it in about a millisecond.
SLOW_CANARY_STEPS = 100_000
SHADOW_WAIT_S = 30.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model files: two classifiers, a copy of the first, a slow and a failing one with
    the classifier's signature."""
    root = tmp_path_factory.mktemp("shadow_models")
    return {
        "mlp1": write_mlp(root / "mlp1.onnx", seed=1),
        "mlp2": write_mlp(root / "mlp2.onnx", seed=2),
        "mlp1_copy": write_mlp(root / "mlp1_copy.onnx", seed=1),
        "slow": write_model(slow_mlp(seed=3), root / "slow.onnx"),
        "failing": write_model(failing_mlp(seed=4), root / "failing.onnx"),
    }


SERIAL = {"dynamic_batching": {"enabled": False}}
ENDPOINTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    # endpoint: the model file and settings of versions 1, 2, ...
    "shadow_slow": [("mlp1", {}), ("slow", SERIAL)],
    "shadow_drop": [("mlp1", {}), ("slow", SERIAL)],
    "shadow_fail": [("mlp1", {}), ("failing", {"warmup": False, **SERIAL})],
    "shadow_compare": [("mlp1", {}), ("mlp2", {}), ("mlp1_copy", {})],
    "shadow_rate": [("mlp1", {}), ("mlp2", {})],
    "rollout_ok": [("mlp1", {}), ("mlp2", {})],
    "rollout_slow": [("mlp1", {}), ("slow", {})],
    "rollout_by_hand": [("mlp1", {}), ("mlp2", {})],
}


@pytest.fixture(scope="module")
def server(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TurnoutProcess]:
    """This file's server, every endpoint of ENDPOINTS on the latest route to begin with."""
    root = tmp_path_factory.mktemp("shadow")
    config = write_config(
        root / "turnout.yaml",
        {
            "models": [
                {"name": endpoint, "version": index, "path": str(models[model]), **settings}
                for endpoint, versions in ENDPOINTS.items()
                for index, (model, settings) in enumerate(versions, 1)
            ]
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


def _shadow(admin: Admin, endpoint: str) -> dict[str, int]:
    """The shadow counters of the route's admin view (zeros before the first copy)."""
    counters: dict[str, int] = admin.route(endpoint).get("shadow", {})
    return {name: counters.get(name, 0) for name in ("mirrored", "dropped", "errors", "compared")}


def _shadow_metrics(server: TurnoutProcess, endpoint: str, version: str) -> dict[str, float]:
    metrics = scrape(server)
    labels = {"endpoint": endpoint, "version": version}
    return {
        "mirrored": metrics.value("turnout_shadow_mirrored_total", **labels),
        "dropped": metrics.value("turnout_shadow_dropped_total", **labels),
        "errors": metrics.value("turnout_shadow_errors_total", **labels),
        "compared": metrics.value("turnout_shadow_max_abs_diff_count", **labels),
    }


def _shadow_once(
    admin: Admin, endpoint: str, done: Callable[[dict[str, int]], bool], what: str
) -> dict[str, int]:
    """The shadow counters, once ``done`` says they are what the test waits for."""

    def probe() -> dict[str, int] | None:
        counters = _shadow(admin, endpoint)
        return counters if done(counters) else None

    return wait_for(probe, what, timeout_s=SHADOW_WAIT_S)


def _settled(admin: Admin, endpoint: str, copies: int) -> dict[str, int]:
    """The shadow counters once all ``copies`` are compared or failed."""
    return _shadow_once(
        admin,
        endpoint,
        lambda c: c["compared"] + c["errors"] == copies,
        f"{copies} shadow copies of {endpoint} finished",
    )


# --- shadow -------------------------------------------------------------------------------------


def test_slow_shadow_neither_changes_nor_delays_the_primary(
    server: TurnoutProcess, admin: Admin, session: HttpSession, models: dict[str, Path]
) -> None:
    rows = busy_mlp_rows(BUSY_STEPS)  # about a second of the slow shadow's loop, per copy
    expected = run_onnx(models["mlp1"], {"INPUT0": rows})
    admin.set_route("shadow_slow", {"policy": "fixed", "version": "1"})
    without = http_answer(http_infer(session, "shadow_slow", rows))

    admin.set_route("shadow_slow", {"policy": "fixed", "version": "1", "shadow": {"version": "2"}})
    copies = 3
    for sent in range(1, copies + 1):
        answer = http_answer(http_infer(session, "shadow_slow", rows))
        assert answer.version == "1"
        for name in ("OUTPUT0", "LABEL"):
            np.testing.assert_array_equal(answer.outputs[name], without.outputs[name])
        np.testing.assert_allclose(answer.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
        # Answered while its own copy is still queued or running on the shadow.
        counters = _shadow(admin, "shadow_slow")
        assert counters["mirrored"] == sent, counters
        assert counters["compared"] + counters["errors"] < sent, counters

    counters = _settled(admin, "shadow_slow", copies)
    assert counters == {"mirrored": copies, "dropped": 0, "errors": 0, "compared": copies}
    assert _shadow_metrics(server, "shadow_slow", "2") == {
        "mirrored": copies,
        "dropped": 0,
        "errors": 0,
        "compared": copies,
    }
    # The copies are no requests of the endpoint: its request metrics count the primaries only.
    metrics = scrape(server)
    for sample in metrics.find("turnout_requests_total", endpoint="shadow_slow"):
        if sample.value:
            assert sample.labels["version"] == "1", sample


def test_shadow_copies_beyond_max_inflight_are_dropped_and_counted(
    server: TurnoutProcess, admin: Admin, session: HttpSession
) -> None:
    admin.set_route(
        "shadow_drop",
        {"policy": "fixed", "version": "1", "shadow": {"version": "2", "max_inflight": 1}},
    )
    # One copy keeps the shadow busy for about two seconds...
    http_answer(http_infer(session, "shadow_drop", busy_mlp_rows(2 * BUSY_STEPS)))
    # ...so the copies of the next requests find max_inflight reached.
    quick = 5
    for _ in range(quick):
        assert http_answer(http_infer(session, "shadow_drop", mlp_inputs(1, 1))).version == "1"
    counters = _shadow(admin, "shadow_drop")
    assert counters["mirrored"] == 1, counters
    assert counters["dropped"] == quick, counters

    _settled(admin, "shadow_drop", 1)
    # With the shadow free again, the next copy is sent.
    http_answer(http_infer(session, "shadow_drop", mlp_inputs(1, 2)))
    counters = _settled(admin, "shadow_drop", 2)
    assert counters == {"mirrored": 2, "dropped": quick, "errors": 0, "compared": 2}
    assert _shadow_metrics(server, "shadow_drop", "2") == counters


def test_failing_shadow_is_counted_and_never_reaches_the_caller(
    server: TurnoutProcess,
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    models: dict[str, Path],
) -> None:
    admin.set_route("shadow_fail", {"policy": "fixed", "version": "1", "shadow": {"version": "2"}})
    copies = 0
    for batch in (1, 2, 3):
        rows = mlp_inputs(batch, seed=batch)
        expected = run_onnx(models["mlp1"], {"INPUT0": rows})
        for answer in (
            http_answer(http_infer(session, "shadow_fail", rows)),
            grpc_infer(stub, "shadow_fail", rows),
        ):
            copies += 1
            assert answer.version == "1"
            np.testing.assert_allclose(answer.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
            np.testing.assert_array_equal(answer.outputs["LABEL"], expected["LABEL"])
    counters = _settled(admin, "shadow_fail", copies)
    assert counters == {"mirrored": copies, "dropped": 0, "errors": copies, "compared": 0}
    assert _shadow_metrics(server, "shadow_fail", "2") == counters
    # The version really fails when asked directly (so the errors above were its own).
    reply = http_infer(session, "shadow_fail", mlp_inputs(1, seed=1), version="2")
    assert reply.status == 400, reply


@pytest.mark.parametrize(
    ("shadow", "model"),
    [
        pytest.param("2", "mlp2", id="another-classifier"),
        pytest.param("3", "mlp1_copy", id="same-weights"),
    ],
)
def test_shadow_outputs_are_compared_with_the_primary(
    server: TurnoutProcess,
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    models: dict[str, Path],
    shadow: str,
    model: str,
) -> None:
    admin.set_route(
        "shadow_compare",
        {"policy": "fixed", "version": "1", "shadow": {"version": shadow, "rate": 1.0}},
    )
    expected: dict[str, tuple[float, float]] = {}
    agreed = rows_total = 0
    sum_of_worst = 0.0
    for index in range(6):
        rows = mlp_inputs(2 + index % 2, seed=20 + index)
        request_id = f"compare-{shadow}-{index}"
        primary = run_onnx(models["mlp1"], {"INPUT0": rows})
        other = run_onnx(models[model], {"INPUT0": rows})
        output_diff = float(np.max(np.abs(primary["OUTPUT0"] - other["OUTPUT0"])))
        label_diff = float(np.max(np.abs(primary["LABEL"] - other["LABEL"])))
        same_top1 = np.argmax(primary["OUTPUT0"], -1) == np.argmax(other["OUTPUT0"], -1)
        agreed += int(same_top1.sum())
        rows_total += same_top1.size
        sum_of_worst += max(output_diff, label_diff)
        expected[request_id] = (output_diff, float(same_top1.mean()))
        if index % 2:
            answer = grpc_infer(stub, "shadow_compare", rows, request_id=request_id)
        else:
            answer = http_answer(http_infer(session, "shadow_compare", rows, request_id=request_id))
        assert answer.version == "1"
    # Pinned requests are not mirrored.
    for version in ("1", "2", "3"):
        http_answer(http_infer(session, "shadow_compare", mlp_inputs(1, 3), version=version))
    counters = _settled(admin, "shadow_compare", len(expected))
    assert counters == {"mirrored": 6, "dropped": 0, "errors": 0, "compared": 6}

    records = admin.route("shadow_compare")["shadow"]["recent"]
    by_id = {record["request_id"]: record["outputs"] for record in records}
    assert set(expected) <= set(by_id), by_id
    for request_id, (output_diff, top1) in expected.items():
        outputs = by_id[request_id]
        assert outputs["OUTPUT0"]["max_abs_diff"] == pytest.approx(output_diff, abs=1e-6)
        assert outputs["OUTPUT0"]["top1_agreement"] == pytest.approx(top1)
        assert "LABEL" in outputs
    if model == "mlp1_copy":
        assert all(diff == 0 for diff, _ in expected.values())
        assert agreed == rows_total
    else:
        assert any(diff > 1e-3 for diff, _ in expected.values()), expected

    metrics = scrape(server)
    labels = {"endpoint": "shadow_compare", "version": shadow}
    assert metrics.value("turnout_shadow_max_abs_diff_count", **labels) == 6
    assert metrics.value("turnout_shadow_max_abs_diff_sum", **labels) == pytest.approx(
        sum_of_worst, abs=1e-5
    )
    assert metrics.value("turnout_shadow_top1_agreement", **labels) == pytest.approx(
        agreed / rows_total
    )


@pytest.mark.parametrize(
    ("rate", "requests"),
    [
        pytest.param(0.0, 50, id="rate-0"),
        pytest.param(0.5, 300, id="rate-half"),
        pytest.param(1.0, 50, id="rate-1"),
    ],
)
def test_shadow_rate_samples_the_routed_requests(
    admin: Admin, stub: pb_grpc.GRPCInferenceServiceStub, rate: float, requests: int
) -> None:
    admin.set_route(
        "shadow_rate",
        {"policy": "fixed", "version": "1", "shadow": {"version": "2", "rate": rate}},
    )
    before = _shadow(admin, "shadow_rate")
    rows = mlp_inputs(1, seed=30)
    for _ in range(requests):
        assert grpc_infer(stub, "shadow_rate", rows).version == "1"
    copies = before["compared"] + before["errors"]
    after = _shadow_once(
        admin,
        "shadow_rate",
        lambda c: c["compared"] + c["errors"] == c["mirrored"],
        "the shadow copies finished",
    )
    sampled = after["mirrored"] + after["dropped"] - before["mirrored"] - before["dropped"]
    low, high = binomial_bounds(requests, rate)
    assert low <= sampled <= high, (sampled, rate)
    assert after["compared"] + after["errors"] >= copies


# --- guarded rollout ------------------------------------------------------------------------------


def _rollout(admin: Admin, endpoint: str) -> dict[str, Any]:
    state: dict[str, Any] = admin.route(endpoint)["rollout"]
    return state


def _rollout_metrics(server: TurnoutProcess, endpoint: str) -> tuple[float, float]:
    metrics = scrape(server)
    return (
        metrics.value("turnout_rollout_canary_percent", endpoint=endpoint),
        metrics.value("turnout_rollout_rollbacks_total", endpoint=endpoint),
    )


def _all_to(session: HttpSession, endpoint: str, version: str, requests: int = 30) -> None:
    rows = mlp_inputs(1, seed=40)
    versions = {http_answer(http_infer(session, endpoint, rows)).version for _ in range(requests)}
    assert versions == {version}


def test_healthy_canary_steps_up_to_completion(
    server: TurnoutProcess, admin: Admin, session: HttpSession
) -> None:
    steps = [10.0, 50.0, 100.0]
    route = {
        "policy": "rollout",
        "stable": "1",
        "canary": "2",
        "steps": steps,
        "step_interval_s": 0.5,
        "min_requests": 10,
        # Judged on a few dozen fast requests, p99 is the slowest one: noise, not health.
        "max_p99_ratio": 1000,
    }
    assert admin.set_route("rollout_ok", route)["rollout"] == {
        "status": "running",
        "step": 0,
        "percent": 10.0,
        "reason": "",
    }
    assert _rollout_metrics(server, "rollout_ok") == (10.0, 0.0)
    seen: list[float] = []

    def completed() -> bool:
        state = _rollout(admin, "rollout_ok")
        if not seen or seen[-1] != state["percent"]:
            seen.append(state["percent"])
        return bool(state["status"] == "completed")

    clients = {"http": http_client("rollout_ok"), "grpc": grpc_client("rollout_ok")}
    with Load(server, clients, lambda index: mlp_inputs(1, seed=50 + index)) as load:
        wait_for(completed, "the rollout completed", timeout_s=30)
        sent = load.stop()
    assert [s for s in sent if s.answer is None] == []
    assert seen == sorted(seen), seen
    assert set(seen) <= set(steps), seen

    assert _rollout(admin, "rollout_ok") == {
        "status": "completed",
        "step": 2,
        "percent": 100.0,
        "reason": "every step passed",
    }
    steps_taken = [
        e for e in admin.audit() if e["endpoint"] == "rollout_ok" and e["who"] == "rollout"
    ]
    assert [(e["action"], e["new"]) for e in steps_taken] == [
        ("advance", {"percent": 50.0, "step": 1}),
        ("advance", {"percent": 100.0, "step": 2}),
        ("complete", {"percent": 100.0, "step": 2}),
    ]
    assert steps_taken[-1]["reason"] == "every step passed"
    assert _rollout_metrics(server, "rollout_ok") == (100.0, 0.0)
    _all_to(session, "rollout_ok", "2")


def test_slow_canary_is_rolled_back_automatically(
    server: TurnoutProcess, admin: Admin, session: HttpSession
) -> None:
    route = {
        "policy": "rollout",
        "stable": "1",
        "canary": "2",
        "steps": [50, 100],
        "step_interval_s": 600,
        "min_requests": 5,
    }
    admin.set_route("rollout_slow", route)
    clients = {
        "http-a": http_client("rollout_slow"),
        "http-b": http_client("rollout_slow"),
        "grpc": grpc_client("rollout_slow"),
    }
    with Load(server, clients, lambda _: busy_mlp_rows(SLOW_CANARY_STEPS)) as load:
        wait_for(
            lambda: _rollout(admin, "rollout_slow")["status"] != "running",
            "the rollout judged",
            timeout_s=30,
        )
        sent = load.stop()
    assert [s for s in sent if s.answer is None] == []  # slow, but every request answered

    state = _rollout(admin, "rollout_slow")
    assert state["status"] == "rolled_back", state
    assert state["percent"] == 0.0
    assert "p99" in state["reason"], state
    assert "1.5x the stable's" in state["reason"], state
    assert _rollout_metrics(server, "rollout_slow") == (0.0, 1.0)
    [entry] = [
        e for e in admin.audit() if e["endpoint"] == "rollout_slow" and e["who"] == "rollout"
    ]
    assert entry["action"] == "rollback"
    assert entry["reason"] == state["reason"]
    assert entry["new"] == {"percent": 0.0, "step": 0}
    _all_to(session, "rollout_slow", "1")


def test_rollout_rolled_back_or_promoted_by_hand(
    server: TurnoutProcess, admin: Admin, session: HttpSession
) -> None:
    route = {"policy": "rollout", "stable": "1", "canary": "2", "step_interval_s": 600}
    admin.set_route("rollout_by_hand", route)
    rolled_back = admin.rollback("rollout_by_hand")["rollout"]
    assert rolled_back == {
        "status": "rolled_back",
        "step": 0,
        "percent": 0.0,
        "reason": "rolled back by hand",
    }
    assert _rollout_metrics(server, "rollout_by_hand") == (0.0, 1.0)
    _all_to(session, "rollout_by_hand", "1")
    last = admin.audit(limit=1)[0]
    assert (last["action"], last["reason"]) == ("rollback", "rolled back by hand")

    admin.set_route("rollout_by_hand", route)
    assert admin.promote("rollout_by_hand")["route"] == {"policy": "fixed", "version": "2"}
    _all_to(session, "rollout_by_hand", "2")
