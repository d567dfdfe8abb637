"""The admin API end to end: off without a token, 401 without the right one, tokens named in a
token file, cross-origin changes refused, every invalid change refused with the field named and
nothing changed, and the audit log of the changes that were made.

"Nothing changed" is checked on everything a change could touch: every route as the API shows
it, the audit log, the repository index, and the files under the state directory."""

import base64
import datetime
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.e2e import scrape, write_config
from tests.support.e2e_models import write_garbage_model
from tests.support.rawhttp import Reply, request
from tests.support.routing import Admin, admin_env, bearer
from tests.support.server import TurnoutProcess

ENV_TOKEN = "env-secret"
# The token file: a comment, a blank line, two named tokens and one bare token (line 5).
TOKEN_FILE = "# ops tokens\n\nalice alice-secret\nbob   bob-secret\nbare-secret\n"
ALLOWED_ORIGIN = "https://ops.example"
BASELINE = {"policy": "canary", "weights": {"1": 90, "2": 10}}


@dataclass(frozen=True, slots=True)
class Served:
    """This file's server and where it keeps its state."""

    process: TurnoutProcess
    state_dir: Path


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server with the admin API on (a token in the environment and a token file), serving
    ``mlp`` versions 1 and 2, and ``other``: version 1 and a version 2 that failed to load,
    routed to version 1 by the config."""
    root = tmp_path_factory.mktemp("admin")
    (root / "tokens.txt").write_text(TOKEN_FILE)
    broken = write_garbage_model(root / "broken.onnx")
    mlp = {version: str(repository / "mlp" / version / "model.onnx") for version in ("1", "2")}
    config = write_config(
        root / "turnout.yaml",
        {
            "models": [
                {"name": "mlp", "version": 1, "path": mlp["1"]},
                {"name": "mlp", "version": 2, "path": mlp["2"]},
                {"name": "other", "version": 1, "path": mlp["1"]},
                {"name": "other", "version": 2, "path": str(broken)},
            ],
            "routes": {"other": {"policy": "fixed", "version": 1}},
            "admin": {"token_file": "tokens.txt", "allowed_origins": [ALLOWED_ORIGIN]},
        },
    )
    state_dir = root / "state"
    with TurnoutProcess(
        ["--config", str(config), "--state-dir", str(state_dir)],
        root / "run",
        env=admin_env(ENV_TOKEN),
    ) as process:
        yield Served(process, state_dir)
        assert process.stop() == 0, process.logs()
        assert "Traceback" not in process.logs(), process.logs()


@pytest.fixture(scope="module")
def admin(served: Served) -> Admin:
    """The admin client with the environment's token."""
    return Admin(served.process, ENV_TOKEN)


@pytest.fixture
def baseline(admin: Admin) -> dict[str, Any]:
    """``mlp`` on a canary, so that promote and rollback would change something."""
    return admin.set_route("mlp", BASELINE)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a change could touch."""

    routes: Any
    audit: list[dict[str, Any]]
    index: list[dict[str, str]]
    files: dict[str, bytes]
    route_info: list[tuple[str, str]]


def _snapshot(served: Served, admin: Admin) -> Snapshot:
    files = {
        path.name: path.read_bytes()
        for path in sorted(served.state_dir.iterdir())
        if path.is_file() and not path.name.startswith(".")
    }
    info = sorted(
        (sample.labels["endpoint"], sample.labels["policy"])
        for sample in scrape(served.process).find("turnout_route_info")
    )
    return Snapshot(admin.ok("GET", "/admin/routes"), admin.audit(), admin.index(), files, info)


# --- off, and refused without the right token -----------------------------------------------------

# (method, path, body) of every admin and repository call.
ADMIN_CALLS = [
    pytest.param("GET", "/admin/routes", None, id="list"),
    pytest.param("GET", "/admin/routes/mlp", None, id="get"),
    pytest.param("PUT", "/admin/routes/mlp", {"policy": "fixed", "version": "1"}, id="set"),
    pytest.param("POST", "/admin/routes/mlp/promote", None, id="promote"),
    pytest.param("POST", "/admin/routes/mlp/rollback", None, id="rollback"),
    pytest.param("GET", "/admin/routes/mlp/report", None, id="report"),
    pytest.param("GET", "/admin/audit", None, id="audit"),
    pytest.param("POST", "/v2/repository/index", None, id="index"),
    pytest.param(
        "POST", "/v2/repository/models/mlp/load", {"parameters": {"version": "1"}}, id="load"
    ),
    pytest.param(
        "POST", "/v2/repository/models/mlp/unload", {"parameters": {"version": "1"}}, id="unload"
    ),
]


def _send(address: str, method: str, path: str, body: Any, headers: dict[str, str]) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    return request(address, method, path, data, {"Content-Type": "application/json", **headers})


def _assert_no_route_data(reply: Reply) -> None:
    for leak in (b"policy", b"weights", b"latest", b"entries", b"READY"):
        assert leak not in reply.body, reply


@pytest.mark.parametrize(
    "headers",
    [pytest.param({}, id="no-token"), pytest.param(bearer(ENV_TOKEN), id="with-a-token")],
)
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_admin_api_is_off_without_a_configured_token(
    server: TurnoutProcess, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    """The shared server has no token configured: the admin paths do not exist."""
    reply = _send(server.http_url, method, path, body, headers)
    assert reply.status == 404, reply
    _assert_no_route_data(reply)
    status, _ = server.get("/v2/models/mlp")
    assert status == 200


BAD_CREDENTIALS = [
    pytest.param({}, id="none"),
    pytest.param(bearer("wrong-token"), id="wrong-token"),
    pytest.param(bearer(""), id="empty-token"),
    pytest.param(bearer("alice"), id="a-name-not-a-token"),
    pytest.param(bearer("ALICE-SECRET"), id="wrong-case"),
    pytest.param(bearer("alice-secret-and-more"), id="token-with-a-suffix"),
    pytest.param(bearer("alice-secre"), id="token-prefix"),
    pytest.param({"Authorization": "alice-secret"}, id="no-scheme"),
    pytest.param(
        {"Authorization": "Basic " + base64.b64encode(b"alice:alice-secret").decode()},
        id="basic-scheme",
    ),
]


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_wrong_or_missing_token_gets_401_and_changes_nothing(
    served: Served,
    admin: Admin,
    baseline: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    credentials: dict[str, str],
) -> None:
    before = _snapshot(served, admin)
    reply = _send(served.process.http_url, method, path, body, credentials)
    assert reply.status == 401, reply
    assert reply.headers.get("www-authenticate", "").lower().startswith("bearer"), reply
    reply.error()  # the body is {"error": message} and nothing else
    _assert_no_route_data(reply)
    assert _snapshot(served, admin) == before


@pytest.mark.parametrize(
    ("authorization", "who"),
    [
        pytest.param("Bearer alice-secret", "alice", id="alice"),
        pytest.param("Bearer bob-secret", "bob", id="bob-padded-in-the-file"),
        pytest.param("Bearer bare-secret", "token5", id="bare-token-named-by-line"),
        pytest.param(f"Bearer {ENV_TOKEN}", "env", id="environment"),
        pytest.param("bearer alice-secret", "alice", id="scheme-in-lower-case"),
        pytest.param("BEARER   alice-secret  ", "alice", id="scheme-upper-case-spaces"),
    ],
)
def test_token_file_names_who_changed_the_route(
    served: Served, admin: Admin, authorization: str, who: str
) -> None:
    route = {"policy": "canary", "weights": {"1": 70, "2": 30}}
    reply = _send(
        served.process.http_url,
        "PUT",
        "/admin/routes/mlp",
        route,
        {"Authorization": authorization},
    )
    assert reply.status == 200, reply
    assert reply.json()["route"] == {"policy": "canary", "weights": {"1": 70.0, "2": 30.0}}
    last = admin.audit(limit=1)
    assert len(last) == 1, last
    assert last[0]["who"] == who
    assert last[0]["action"] == "set"
    assert last[0]["endpoint"] == "mlp"
    assert last[0]["new"] == reply.json()["route"]


# --- cross-origin changes -------------------------------------------------------------------------

CHANGING_CALLS = [
    pytest.param("PUT", "/admin/routes/mlp", {"policy": "fixed", "version": "1"}, id="set"),
    pytest.param("POST", "/admin/routes/mlp/promote", None, id="promote"),
    pytest.param("POST", "/admin/routes/mlp/rollback", None, id="rollback"),
    pytest.param(
        "POST", "/v2/repository/models/mlp/unload", {"parameters": {"version": "1"}}, id="unload"
    ),
    pytest.param(
        "POST", "/v2/repository/models/mlp/load", {"parameters": {"version": "1"}}, id="load"
    ),
]
FOREIGN_ORIGINS = [
    pytest.param("https://evil.example", id="other-site"),
    pytest.param("null", id="opaque-origin"),
    pytest.param("http://ops.example", id="other-scheme"),
    pytest.param("https://ops.example.evil.example", id="allowed-as-a-prefix"),
    pytest.param("https://ops.example:8443", id="other-port"),
]


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
@pytest.mark.parametrize(("method", "path", "body"), CHANGING_CALLS)
def test_cross_origin_change_is_refused_with_403(
    served: Served,
    admin: Admin,
    baseline: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    origin: str,
) -> None:
    before = _snapshot(served, admin)
    reply = admin.call(method, path, body, headers={"Origin": origin})
    assert reply.status == 403, reply
    assert "origin" in reply.error()
    assert _snapshot(served, admin) == before


def test_allowed_origin_may_change_and_any_origin_may_read(
    served: Served, admin: Admin, baseline: dict[str, Any]
) -> None:
    route = {"policy": "fixed", "version": "2"}
    reply = admin.call("PUT", "/admin/routes/mlp", route, headers={"Origin": ALLOWED_ORIGIN})
    assert reply.status == 200, reply
    assert reply.json()["route"] == route
    read = admin.call("GET", "/admin/routes/mlp", headers={"Origin": "https://evil.example"})
    assert read.status == 200, read
    assert read.json()["route"] == route


# --- invalid changes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invalid:
    """A refused change: the call, the status it gets, and what its message must name."""

    path: str
    body: bytes
    status: int
    names: tuple[str, ...]
    method: str = "PUT"


def _route_change(route: Any, *names: str, endpoint: str = "mlp", status: int = 400) -> Invalid:
    return Invalid(f"/admin/routes/{endpoint}", json.dumps(route).encode(), status, names)


INVALID_CHANGES = [
    pytest.param(
        _route_change({"policy": "canary", "weights": {"1": -1, "2": 10}}, "weights"),
        id="negative-weight",
    ),
    pytest.param(
        _route_change({"policy": "canary", "weights": {"1": 0, "2": 0}}, "weights", "positive"),
        id="all-zero-weights",
    ),
    pytest.param(
        _route_change({"policy": "canary", "weights": {"1": 1e308, "2": 1e308}}, "weights"),
        id="weights-summing-to-infinity",
    ),
    pytest.param(
        _route_change({"policy": "canary", "weights": {"1": "heavy", "2": 1}}, "weights"),
        id="weight-not-a-number",
    ),
    pytest.param(
        _route_change({"policy": "canary", "weights": {"1": 50, "9": 50}}, "'9'"),
        id="unknown-version-in-weights",
    ),
    pytest.param(_route_change({"policy": "fixed", "version": "9"}, "'9'"), id="unknown-version"),
    pytest.param(
        _route_change({"policy": "fixed", "version": "../1"}, "version"), id="version-not-a-number"
    ),
    pytest.param(
        _route_change(
            {"policy": "fixed", "version": "2"}, "version 2", "not ready", endpoint="other"
        ),
        id="version-not-ready",
    ),
    pytest.param(
        _route_change({"policy": "latest", "shadow": {"version": "2", "rate": 1.5}}, "shadow.rate"),
        id="shadow-rate-above-1",
    ),
    pytest.param(
        _route_change(
            {"policy": "latest", "shadow": {"version": "2", "rate": -0.1}}, "shadow.rate"
        ),
        id="shadow-rate-negative",
    ),
    pytest.param(
        _route_change(
            {"policy": "latest", "shadow": {"version": "2", "max_inflight": 0}},
            "shadow.max_inflight",
        ),
        id="shadow-max-inflight-0",
    ),
    pytest.param(
        _route_change({"policy": "latest", "shadow": {"version": "7"}}, "'7'"),
        id="shadow-unknown-version",
    ),
    pytest.param(
        _route_change(
            {"policy": "fixed", "version": "1", "shadow": {"version": "2"}},
            "version 2",
            "not ready",
            endpoint="other",
        ),
        id="shadow-version-not-ready",
    ),
    pytest.param(_route_change({"policy": "random"}, "policy"), id="unknown-policy"),
    pytest.param(_route_change({"weights": {"1": 1, "2": 1}}, "policy"), id="no-policy"),
    pytest.param(
        _route_change({"policy": "fixed", "version": "1", "weights": {"1": 1}}, "weights"),
        id="field-of-another-policy",
    ),
    pytest.param(_route_change({"policy": "latest", "live": "1"}, "live"), id="field-on-latest"),
    pytest.param(_route_change({"policy": "canary"}, "weights", "required"), id="missing-field"),
    pytest.param(
        _route_change({"policy": "latest", "colour": "blue"}, "colour", "unknown field"),
        id="unknown-field",
    ),
    pytest.param(
        _route_change({"policy": "blue_green", "live": "1", "staged": "1"}, "staged"),
        id="staged-same-as-live",
    ),
    pytest.param(
        _route_change({"policy": "bandit", "arms": ["1"]}, "arms"), id="bandit-with-one-arm"
    ),
    pytest.param(
        _route_change({"policy": "bandit", "arms": ["1", "2"], "epsilon": 2}, "epsilon"),
        id="epsilon-above-1",
    ),
    pytest.param(
        _route_change({"policy": "bandit", "arms": ["1", "2"], "algorithm": "greedy"}, "algorithm"),
        id="unknown-algorithm",
    ),
    pytest.param(
        _route_change(
            {"policy": "rollout", "stable": "1", "canary": "2", "steps": [50, 10]}, "steps"
        ),
        id="rollout-steps-decreasing",
    ),
    pytest.param(
        _route_change(
            {"policy": "rollout", "stable": "1", "canary": "2", "max_p99_ratio": 0.5},
            "max_p99_ratio",
        ),
        id="rollout-p99-ratio-below-1",
    ),
    pytest.param(
        Invalid("/admin/routes/mlp", b'{"policy": "fixed", "version": ', 400, ("JSON",)),
        id="malformed-json",
    ),
    pytest.param(
        Invalid("/admin/routes/mlp", b'["fixed", "1"]', 400, ("object",)), id="not-an-object"
    ),
    pytest.param(Invalid("/admin/routes/mlp", b"", 400, ("policy",)), id="empty-body"),
    pytest.param(
        _route_change({"policy": "latest"}, "nope", endpoint="nope", status=404),
        id="unknown-endpoint",
    ),
    pytest.param(
        Invalid("/admin/routes/nope/promote", b"", 404, ("nope",), "POST"),
        id="promote-unknown-endpoint",
    ),
    pytest.param(
        Invalid("/admin/routes/nope/rollback", b"", 404, ("nope",), "POST"),
        id="rollback-unknown-endpoint",
    ),
    pytest.param(
        Invalid("/admin/routes/other/promote", b"", 400, ("fixed", "promote"), "POST"),
        id="promote-a-fixed-route",
    ),
    pytest.param(
        Invalid("/admin/routes/other/rollback", b"", 400, ("earlier route",), "POST"),
        id="rollback-without-history",
    ),
]


@pytest.mark.parametrize("invalid", INVALID_CHANGES)
def test_invalid_change_is_refused_naming_the_problem_and_changes_nothing(
    served: Served, admin: Admin, baseline: dict[str, Any], invalid: Invalid
) -> None:
    before = _snapshot(served, admin)
    reply = admin.call(invalid.method, invalid.path, body=invalid.body)
    assert reply.status == invalid.status, reply
    message = reply.error()
    for name in invalid.names:
        assert name in message, message
    assert _snapshot(served, admin) == before


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/admin/routes/nope", id="get"),
        pytest.param("/admin/routes/nope/report", id="report"),
    ],
)
def test_reading_an_unknown_endpoint_is_404(admin: Admin, path: str) -> None:
    reply = admin.call("GET", path)
    assert reply.status == 404, reply
    assert "nope" in reply.error()


def test_list_shows_every_endpoint_and_its_route(admin: Admin, baseline: dict[str, Any]) -> None:
    routes = admin.ok("GET", "/admin/routes")["routes"]
    assert set(routes) == {"mlp", "other"}
    assert routes["mlp"] == {
        "endpoint": "mlp",
        "route": {"policy": "canary", "weights": {"1": 90.0, "2": 10.0}},
    }
    assert routes["other"] == {"endpoint": "other", "route": {"policy": "fixed", "version": "1"}}


# --- the audit log --------------------------------------------------------------------------------


def test_audit_log_records_set_promote_and_rollback_with_old_and_new(
    served: Served, admin: Admin, baseline: dict[str, Any]
) -> None:
    alice = Admin(served.process, "alice-secret")
    canary = {"policy": "canary", "weights": {"1": 80.0, "2": 20.0}}
    promoted = {"policy": "canary", "weights": {"1": 0.0, "2": 100.0}}
    assert alice.set_route("mlp", canary)["route"] == canary
    assert alice.promote("mlp")["route"] == promoted
    assert alice.rollback("mlp")["route"] == canary

    entries = admin.audit(limit=3)
    assert [(e["who"], e["action"], e["endpoint"]) for e in entries] == [
        ("alice", "set", "mlp"),
        ("alice", "promote", "mlp"),
        ("alice", "rollback", "mlp"),
    ]
    assert [(e["old"], e["new"]) for e in entries] == [
        (baseline["route"], canary),
        (canary, promoted),
        (promoted, canary),
    ]
    times = [datetime.datetime.fromisoformat(entry["time"]) for entry in entries]
    assert all(time.tzinfo is not None for time in times), times
    assert times == sorted(times)

    # The same entries are on disk, one JSON object per line, and the route is saved.
    lines = (served.state_dir / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines[-3:]] == entries
    saved = json.loads((served.state_dir / "routes.json").read_text())
    assert saved["mlp"]["route"] == canary
    assert admin.audit(limit=1) == entries[-1:]


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param("0", id="zero"),
        pytest.param("-1", id="negative"),
        pytest.param("1001", id="above-1000"),
        pytest.param("ten", id="not-a-number"),
        pytest.param("1.5", id="fraction"),
        pytest.param("", id="empty"),
    ],
)
def test_audit_limit_must_be_1_to_1000(admin: Admin, limit: str) -> None:
    reply = admin.call("GET", f"/admin/audit?limit={limit}")
    assert reply.status == 400, reply
    assert "limit" in reply.error()
