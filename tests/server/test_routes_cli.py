"""``turnout routes`` (server/routes_cli.py) without a server: the routes it builds from
``KEY=VALUE`` fields, and the refusals that need no network. (Talking to a real server is
covered end to end.)"""

import socket
from typing import Any

import pytest

from turnout.router.specs import parse_route
from turnout.server import routes_cli
from turnout.server.admin_auth import TOKEN_VARIABLE
from turnout.server.cli import main

FIELDS = [
    pytest.param("latest", [], {"policy": "latest"}, {"policy": "latest"}, id="latest"),
    pytest.param(
        "fixed",
        ["version=2"],
        {"policy": "fixed", "version": 2},
        {"policy": "fixed", "version": "2"},
        id="fixed",
    ),
    pytest.param(
        "canary",
        ["1=90", "2=10"],
        {"policy": "canary", "weights": {"1": 90, "2": 10}},
        {"policy": "canary", "weights": {"1": 90.0, "2": 10.0}},
        id="canary",
    ),
    pytest.param(
        "canary",
        ["1=50", "2=30", "3=20.5"],
        {"policy": "canary", "weights": {"1": 50, "2": 30, "3": 20.5}},
        {"policy": "canary", "weights": {"1": 50.0, "2": 30.0, "3": 20.5}},
        id="canary-three",
    ),
    pytest.param(
        "blue_green",
        ["live=1", "staged=2"],
        {"policy": "blue_green", "live": 1, "staged": 2},
        {"policy": "blue_green", "live": "1", "staged": "2"},
        id="blue-green",
    ),
    pytest.param(
        "bandit",
        ["algorithm=thompson", "arms=1,2"],
        {"policy": "bandit", "algorithm": "thompson", "arms": [1, 2]},
        {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]},
        id="bandit",
    ),
    pytest.param(
        "bandit",
        ["algorithm=epsilon_greedy", "arms=1,2,3", "epsilon=0.2", "reward=real"],
        {
            "policy": "bandit",
            "algorithm": "epsilon_greedy",
            "arms": [1, 2, 3],
            "epsilon": 0.2,
            "reward": "real",
        },
        {
            "policy": "bandit",
            "algorithm": "epsilon_greedy",
            "arms": ["1", "2", "3"],
            "epsilon": 0.2,
            "reward": "real",
        },
        id="bandit-every-field",
    ),
    pytest.param(
        "rollout",
        ["stable=1", "canary=2", "steps=5,50,100", "step_interval_s=30", "min_requests=10"],
        {
            "policy": "rollout",
            "stable": 1,
            "canary": 2,
            "steps": [5, 50, 100],
            "step_interval_s": 30,
            "min_requests": 10,
        },
        {
            "policy": "rollout",
            "stable": "1",
            "canary": "2",
            "steps": [5.0, 50.0, 100.0],
            "step_interval_s": 30.0,
            "min_requests": 10,
        },
        id="rollout",
    ),
    pytest.param(
        "fixed",
        ["version=2=3"],
        {"policy": "fixed", "version": "2=3"},
        None,
        id="value-with-equals-is-kept-whole",
    ),
    pytest.param("fixed", ["version="], {"policy": "fixed", "version": ""}, None, id="empty-value"),
]


@pytest.mark.parametrize(("policy", "fields", "route", "parsed"), FIELDS)
def test_route_from_fields(
    policy: str, fields: list[str], route: dict[str, Any], parsed: dict[str, Any] | None
) -> None:
    built = routes_cli._route_from_fields(policy, fields)

    assert built == route
    if parsed is not None:
        assert parse_route(built).document() == parsed, "the server reads it as meant"


@pytest.mark.parametrize(
    ("policy", "fields", "bad"),
    [
        pytest.param("fixed", ["version"], "version", id="no-equals"),
        pytest.param("canary", ["1=90", "2"], "2", id="canary-weight-without-value"),
        pytest.param("bandit", ["arms=1,2", ""], "", id="empty-field"),
    ],
)
def test_a_malformed_field_is_refused(policy: str, fields: list[str], bad: str) -> None:
    with pytest.raises(routes_cli._Refused) as caught:
        routes_cli._route_from_fields(policy, fields)

    assert str(caught.value) == f"{bad!r}: expected KEY=VALUE"


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.usefixtures("no_token")
@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param(["list"], id="list"),
        pytest.param(["get", "mlp"], id="get"),
        pytest.param(["set", "mlp", "canary", "1=90", "2=10"], id="set"),
        pytest.param(["promote", "mlp"], id="promote"),
        pytest.param(["rollback", "mlp"], id="rollback"),
        pytest.param(["report", "mlp"], id="report"),
        pytest.param(["audit", "--limit", "5"], id="audit"),
        pytest.param(["--token", "", "list"], id="empty-token-flag"),
    ],
)
def test_without_a_token_exits_2(
    arguments: list[str], closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["routes", "--url", f"http://127.0.0.1:{closed_port}", *arguments])

    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"turnout routes: give --token or set {TOKEN_VARIABLE}\n"


def test_an_empty_token_variable_is_no_token(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "")

    assert main(["routes", "--url", f"http://127.0.0.1:{closed_port}", "list"]) == 2
    assert "give --token" in capsys.readouterr().err


@pytest.mark.usefixtures("no_token")
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(
            ["set", "mlp"],
            "turnout routes: give a policy (and its fields) or --json",
            id="no-policy",
        ),
        pytest.param(
            ["set", "mlp", "canary", "1=90", "oops"],
            "turnout routes: 'oops': expected KEY=VALUE",
            id="malformed-field",
        ),
        pytest.param(
            ["set", "mlp", "--json", "{not json"],
            "turnout routes: --json is not valid JSON: ",
            id="bad-json",
        ),
    ],
)
def test_refusals_before_any_request(
    arguments: list[str], message: str, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["routes", "--url", f"http://127.0.0.1:{closed_port}", "--token", "t", *arguments]
    )

    assert status == routes_cli.EXIT_REFUSED == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message), captured.err


@pytest.mark.usefixtures("no_token")
def test_an_unreachable_server_is_refused(
    closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port}"

    status = main(["routes", "--url", url, "--token", "t", "list"])

    assert status == 1
    assert capsys.readouterr().err.startswith(f"turnout routes: cannot reach {url}: ")


def test_the_token_may_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "from-env")
    url = f"http://127.0.0.1:{closed_port}"

    status = main(["routes", "--url", url, "get", "mlp"])

    assert status == 1, "got past the token check to the (absent) server"
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param([], id="no-action"),
        pytest.param(["frobnicate"], id="unknown-action"),
        pytest.param(["get"], id="get-without-endpoint"),
        pytest.param(["audit", "--limit", "many"], id="limit-not-a-number"),
    ],
)
def test_usage_errors_exit_2(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["routes", *arguments])

    assert caught.value.code == 2
    assert "usage: turnout routes" in capsys.readouterr().err
