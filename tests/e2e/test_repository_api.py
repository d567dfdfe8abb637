"""The model repository API end to end (``turnout serve --model-repository``, whose directory is
the model root): loading a version beside the live ones while traffic flows, loads refused when
the path leaves the root, unloading refused while a route can send traffic to the version, and
otherwise draining the version's in-flight request before it is gone, all behind the admin
token.

Every test works on a model of its own, so that each holds alone."""

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support.batching_models import BUSY_STEPS, busy_mlp_rows, slow_mlp
from tests.support.e2e import run_onnx, scrape
from tests.support.e2e_models import write_garbage_model
from tests.support.onnx_models import write_model
from tests.support.polling import wait_for
from tests.support.rawhttp import Reply, post_json, request
from tests.support.routing import (
    Admin,
    HttpSession,
    Load,
    admin_env,
    bearer,
    grpc_client,
    grpc_infer,
    http_answer,
    http_client,
    http_infer,
    mlp_body,
    mlp_inputs,
    write_mlp,
)
from tests.support.scheduling import InThread, launched
from tests.support.server import TurnoutProcess
from turnout.protos import inference_pb2_grpc as pb_grpc

# Requests each client completes before and after a load.
PER_PHASE = 10
# model: the seeds of its versions at start
MODELS = {
    "fresh_a": (1, 2),
    "fresh_b": (1, 2),
    "pair": (1, 2),
    "shrink": (1, 2, 3),
    "fragile": (1,),
    "mended": (1,),
    "guarded": (1,),
    "refused": (1, 2),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model repository the server serves (and loads from): every model of MODELS, and
    ``slowm``, the slow classifier, at versions 1 and 2."""
    directory = tmp_path_factory.mktemp("model_root")
    for model, seeds in MODELS.items():
        for version, seed in enumerate(seeds, 1):
            write_mlp(directory / model / str(version) / "model.onnx", seed)
    for version in (1, 2):
        write_model(slow_mlp(seed=10 + version), directory / "slowm" / str(version) / "model.onnx")
    return directory


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside the model root holding a good model, ``evil/1/model.onnx``."""
    directory = tmp_path_factory.mktemp("outside")
    write_mlp(directory / "evil" / "1" / "model.onnx", seed=66)
    return directory


@pytest.fixture(scope="module")
def server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    """``turnout serve --model-repository ROOT`` with the admin API on."""
    workdir = tmp_path_factory.mktemp("repository_api")
    with TurnoutProcess(["--model-repository", str(root)], workdir, env=admin_env()) as process:
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


def _assert_answers(
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    root: Path,
    model: str,
    version: str,
    pinned: bool,
) -> None:
    """Requests of ``model`` (pinned to ``version``, or routed) are answered by ``version``
    with ONNX Runtime's outputs of its file."""
    rows = mlp_inputs(2, seed=7)
    expected = run_onnx(root / model / version / "model.onnx", {"INPUT0": rows})
    pin = version if pinned else None
    for answer in (
        http_answer(http_infer(session, model, rows, version=pin)),
        grpc_infer(stub, model, rows, version=pin or ""),
    ):
        assert answer.version == version, answer
        np.testing.assert_allclose(answer.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
        np.testing.assert_array_equal(answer.outputs["LABEL"], expected["LABEL"])


def _state(admin: Admin) -> tuple[Any, ...]:
    """What a refused call must leave as it was."""
    return admin.index(), admin.ok("GET", "/admin/routes"), admin.audit()


def _model_ready(server: TurnoutProcess, model: str, version: str) -> float:
    return scrape(server).value("turnout_model_ready", endpoint=model, version=version)


# --- loading --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "given"),
    [pytest.param("fresh_a", "3", id="version-as-text"), pytest.param("fresh_b", 3, id="as-int")],
)
def test_load_a_new_version_beside_the_live_ones_under_traffic(
    server: TurnoutProcess,
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    root: Path,
    model: str,
    given: Any,
) -> None:
    write_mlp(root / model / "3" / "model.onnx", seed=5)
    assert admin.states(model) == {"1": "READY", "2": "READY"}
    clients = {"http": http_client(model), "grpc": grpc_client(model)}
    with Load(server, clients, lambda index: mlp_inputs(1, seed=index)) as load:
        wait_for(lambda: min(load.answered_since(0).values()) >= PER_PHASE, "traffic before")
        loaded = admin.load(model, given)
        after = time.monotonic()
        wait_for(lambda: min(load.answered_since(after).values()) >= PER_PHASE, "traffic after")
        sent = load.stop()
    assert loaded.status == 200, loaded
    assert loaded.json() == {"model": model, "version": "3", "state": "READY"}
    assert [s for s in sent if s.answer is None] == []
    # The latest route moved to the new version once it was ready, and not before.
    assert {s.answer.version for s in sent if s.answer} <= {"2", "3"}
    assert {s.answer.version for s in sent if s.answer and s.started > after} == {"3"}

    assert admin.states(model) == {"1": "READY", "2": "READY", "3": "READY"}
    for version in ("1", "2", "3"):
        _assert_answers(session, stub, root, model, version, pinned=True)
    _assert_answers(session, stub, root, model, "3", pinned=False)
    status, _ = server.get(f"/v2/models/{model}/versions/3/ready")
    assert status == 200
    assert _model_ready(server, model, "3") == 1
    entry = admin.audit(limit=1)[0]
    assert (entry["who"], entry["action"], entry["endpoint"]) == ("env", "load", model)
    assert entry["new"] == {"model": model, "version": "3", "state": "READY"}

    again = admin.load(model, "3")
    assert again.status == 400, again
    assert "already" in again.error()


def test_load_a_model_the_server_did_not_have(
    server: TurnoutProcess,
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    root: Path,
) -> None:
    write_mlp(root / "newcomer" / "4" / "model.onnx", seed=8)
    reply = admin.load("newcomer", "4")
    assert reply.status == 200, reply
    assert admin.states("newcomer") == {"4": "READY"}
    assert admin.route("newcomer")["route"] == {"policy": "latest"}
    _assert_answers(session, stub, root, "newcomer", "4", pinned=False)


def _load_garbage(admin: Admin, root: Path, model: str) -> None:
    write_garbage_model(root / model / "2" / "model.onnx")
    reply = admin.load(model, "2")
    assert reply.status == 200, reply
    outcome = reply.json()
    assert outcome["state"] == "UNAVAILABLE", outcome
    assert outcome["reason"], outcome
    assert admin.states(model) == {"1": "READY", "2": "UNAVAILABLE"}


def test_a_version_that_failed_to_load_takes_no_traffic(
    server: TurnoutProcess,
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    root: Path,
) -> None:
    """A version whose file does not load is listed UNAVAILABLE with the reason, no route may
    name it, and the latest route keeps serving the highest version that is ready."""
    _load_garbage(admin, root, "fragile")
    refused = admin.call("PUT", "/admin/routes/fragile", {"policy": "fixed", "version": "2"})
    assert refused.status == 400, refused
    assert "not ready" in refused.error()
    _assert_answers(session, stub, root, "fragile", "1", pinned=True)
    assert _model_ready(server, "fragile", "2") == 0
    status, _ = server.get("/v2/models/fragile/ready")
    assert status == 200
    _assert_answers(session, stub, root, "fragile", "1", pinned=False)


def test_a_version_that_failed_to_load_loads_once_its_file_is_fixed(
    admin: Admin, session: HttpSession, stub: pb_grpc.GRPCInferenceServiceStub, root: Path
) -> None:
    _load_garbage(admin, root, "mended")
    write_mlp(root / "mended" / "2" / "model.onnx", seed=9)
    reply = admin.load("mended", "2")
    assert reply.status == 200, reply
    assert reply.json() == {"model": "mended", "version": "2", "state": "READY"}
    assert admin.states("mended") == {"1": "READY", "2": "READY"}
    _assert_answers(session, stub, root, "mended", "2", pinned=False)


def _symlinked_model_dir(root: Path, outside: Path) -> tuple[str, str]:
    link = root / "evil"
    if not link.exists():
        link.symlink_to(outside / "evil", target_is_directory=True)
    return "evil", "1"


def _symlinked_version_dir(root: Path, outside: Path) -> tuple[str, str]:
    link = root / "refused" / "7"
    if not link.exists():
        link.symlink_to(outside / "evil" / "1", target_is_directory=True)
    return "refused", "7"


def _symlinked_model_file(root: Path, outside: Path) -> tuple[str, str]:
    link = root / "refused" / "8" / "model.onnx"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside / "evil" / "1" / "model.onnx")
    return "refused", "8"


def _empty_version_dir(root: Path, outside: Path) -> tuple[str, str]:
    (root / "refused" / "9").mkdir(parents=True, exist_ok=True)
    return "refused", "9"


@pytest.mark.parametrize(
    ("place", "status", "says"),
    [
        pytest.param(_symlinked_model_dir, 403, "outside the model root", id="model-dir-link-out"),
        pytest.param(
            _symlinked_version_dir, 403, "outside the model root", id="version-dir-link-out"
        ),
        pytest.param(_symlinked_model_file, 403, "outside the model root", id="file-link-out"),
        pytest.param(_empty_version_dir, 404, "model.onnx", id="version-dir-without-model"),
    ],
)
def test_load_of_a_path_leaving_the_root_is_refused(
    admin: Admin, root: Path, outside: Path, place: Any, status: int, says: str
) -> None:
    model, version = place(root, outside)
    before = _state(admin)
    reply = admin.load(model, version)
    assert reply.status == status, reply
    assert says in reply.error()
    assert _state(admin) == before


@pytest.mark.parametrize(
    ("model", "body", "status", "says"),
    [
        pytest.param("refused", {"parameters": {"version": "../x"}}, 400, "version", id="dotdot"),
        pytest.param(
            "refused", {"parameters": {"version": "../../../etc"}}, 400, "version", id="dotdots"
        ),
        pytest.param("refused", {"parameters": {"version": "1/../2"}}, 400, "version", id="inner"),
        pytest.param("refused", {"parameters": {"version": "/tmp"}}, 400, "version", id="absolute"),
        pytest.param("refused", {"parameters": {"version": "0"}}, 400, "version", id="zero"),
        pytest.param("refused", {"parameters": {"version": "-1"}}, 400, "version", id="negative"),
        pytest.param("refused", {"parameters": {"version": ""}}, 400, "version", id="empty"),
        pytest.param("refused", {"parameters": {"version": True}}, 400, "version", id="boolean"),
        pytest.param("refused", {"parameters": {}}, 400, "version", id="no-version"),
        pytest.param("refused", {}, 400, "version", id="no-parameters"),
        pytest.param("..", {"parameters": {"version": "1"}}, 400, "model name", id="model-dotdot"),
        pytest.param(
            "%2E%2E", {"parameters": {"version": "1"}}, 400, "model name", id="model-dotdot-quoted"
        ),
        pytest.param("refused", {"parameters": {"version": "99"}}, 404, "99", id="unknown-version"),
        pytest.param("ghost", {"parameters": {"version": "1"}}, 404, "ghost", id="unknown-model"),
    ],
)
def test_load_of_a_bad_name_or_missing_file_is_refused(
    admin: Admin, model: str, body: dict[str, Any], status: int, says: str
) -> None:
    before = _state(admin)
    reply = admin.call("POST", f"/v2/repository/models/{model}/load", body)
    assert reply.status == status, reply
    # Not reply.error(): the message quotes the client's own path text, which is no leak.
    document = reply.json()
    assert list(document) == ["error"], document
    assert says in document["error"]
    assert _state(admin) == before


def test_symlink_that_stays_inside_the_root_loads(
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    root: Path,
) -> None:
    link = root / "refused" / "5"
    link.symlink_to(root / "refused" / "2", target_is_directory=True)
    reply = admin.load("refused", "5")
    assert reply.status == 200, reply
    assert reply.json()["state"] == "READY"
    _assert_answers(session, stub, root, "refused", "5", pinned=True)


# --- unloading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "version"),
    [
        pytest.param({"policy": "latest"}, "2", id="latest"),
        pytest.param({"policy": "fixed", "version": "1"}, "1", id="fixed"),
        pytest.param({"policy": "canary", "weights": {"1": 90, "2": 10}}, "2", id="canary"),
        pytest.param({"policy": "blue_green", "live": "1", "staged": "2"}, "2", id="staged"),
        pytest.param({"policy": "bandit", "arms": ["1", "2"]}, "2", id="bandit-arm"),
        pytest.param({"policy": "rollout", "stable": "1", "canary": "2"}, "2", id="rollout"),
        pytest.param(
            {"policy": "fixed", "version": "1", "shadow": {"version": "2"}}, "2", id="shadow"
        ),
    ],
)
def test_unloading_a_version_a_route_uses_is_refused(
    admin: Admin,
    session: HttpSession,
    stub: pb_grpc.GRPCInferenceServiceStub,
    root: Path,
    route: dict[str, Any],
    version: str,
) -> None:
    admin.set_route("pair", route)
    before = _state(admin)
    reply = admin.unload("pair", version)
    assert reply.status == 400, reply
    message = reply.error()
    assert f"version {version}" in message, message
    assert "route" in message, message
    assert _state(admin) == before
    _assert_answers(session, stub, root, "pair", version, pinned=True)


@pytest.mark.parametrize(
    ("model", "version", "says"),
    [
        pytest.param("pair", "9", "'9'", id="unknown-version"),
        pytest.param("ghost", "1", "ghost", id="unknown-model"),
    ],
)
def test_unloading_what_is_not_there_is_404(
    admin: Admin, model: str, version: str, says: str
) -> None:
    before = _state(admin)
    reply = admin.unload(model, version)
    assert reply.status == 404, reply
    assert says in reply.error()
    assert _state(admin) == before


def test_unload_drains_the_in_flight_request_then_the_version_is_gone(
    server: TurnoutProcess, admin: Admin, root: Path
) -> None:
    admin.set_route("slowm", {"policy": "fixed", "version": "1"})
    rows = busy_mlp_rows(2 * BUSY_STEPS)  # about two seconds on version 2's only instance
    expected = run_onnx(root / "slowm" / "2" / "model.onnx", {"INPUT0": rows})
    started = launched(server, "slowm", "2")
    slow = InThread(
        lambda: post_json(server.http_url, "/v2/models/slowm/versions/2/infer", mlp_body(rows))
    )
    wait_for(lambda: launched(server, "slowm", "2") == started + 1, "the slow request running")

    unload = InThread(lambda: admin.unload("slowm", "2"))
    wait_for(lambda: admin.states("slowm").get("2") == "UNLOADING", "version 2 unloading")
    assert not slow.done(), "the slow request ended before the check"
    assert not unload.done()
    # New requests to the version are refused at once while it drains.
    refused = post_json(
        server.http_url, "/v2/models/slowm/versions/2/infer", mlp_body(mlp_inputs(1, 1))
    )
    assert refused.status == 503, refused
    assert not slow.done()

    answered: Reply = slow.result()
    assert answered.status == 200, answered
    assert answered.json()["model_version"] == "2"
    answer = http_answer(answered)
    np.testing.assert_allclose(answer.outputs["OUTPUT0"], expected["OUTPUT0"], rtol=1e-5)
    unloaded = unload.result()
    assert unloaded.status == 200, unloaded
    assert unloaded.json() == {"model": "slowm", "version": "2", "state": "UNLOADED"}

    assert admin.states("slowm") == {"1": "READY"}
    gone = post_json(server.http_url, "/v2/models/slowm/versions/2/infer", mlp_body(rows))
    assert gone.status == 404, gone
    status, _ = server.get("/v2/models/slowm/versions/2/ready")
    assert status == 404
    entry = admin.audit(limit=1)[0]
    assert (entry["action"], entry["endpoint"], entry["new"]["state"]) == (
        "unload",
        "slowm",
        "UNLOADED",
    )
    with HttpSession(server.http_url) as session:
        assert http_answer(http_infer(session, "slowm", mlp_inputs(1, 1))).version == "1"
    # The readiness gauge no longer says the version serves.
    assert _model_ready(server, "slowm", "2") == 0


def test_latest_route_follows_unloads_and_loads(
    admin: Admin, session: HttpSession, stub: pb_grpc.GRPCInferenceServiceStub, root: Path
) -> None:
    admin.set_route("shrink", {"policy": "fixed", "version": "1"})
    reply = admin.unload("shrink", "3")
    assert reply.status == 200, reply
    admin.set_route("shrink", {"policy": "latest"})
    _assert_answers(session, stub, root, "shrink", "2", pinned=False)
    reply = admin.load("shrink", "3")
    assert reply.status == 200, reply
    _assert_answers(session, stub, root, "shrink", "3", pinned=False)


# --- the token ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [pytest.param({}, id="no-token"), pytest.param(bearer("not-the-token"), id="wrong-token")],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v2/repository/index", None, id="index"),
        pytest.param(
            "/v2/repository/models/guarded/load", {"parameters": {"version": "2"}}, id="load"
        ),
        pytest.param(
            "/v2/repository/models/guarded/unload", {"parameters": {"version": "1"}}, id="unload"
        ),
    ],
)
def test_repository_api_needs_the_admin_token(
    server: TurnoutProcess,
    admin: Admin,
    root: Path,
    headers: dict[str, str],
    path: str,
    body: Any,
) -> None:
    write_mlp(root / "guarded" / "2" / "model.onnx", seed=3)
    before = _state(admin)
    data = None if body is None else json.dumps(body).encode()
    reply = request(
        server.http_url, "POST", path, data, {"Content-Type": "application/json", **headers}
    )
    assert reply.status == 401, reply
    assert b"READY" not in reply.body
    reply.error()
    assert _state(admin) == before
    assert admin.states("guarded") == {"1": "READY"}
