"""Route specs (router/specs.py): every policy's valid forms, as JSON and YAML give them, and
every invalid change refused with a message naming the field."""

import math
from typing import Any

import pytest
import yaml

from turnout.errors import InvalidInput
from turnout.router.specs import RouteConfig, ShadowConfig, parse_route

VALID: list[Any] = [
    pytest.param({"policy": "latest"}, {"policy": "latest"}, set(), id="latest"),
    pytest.param(
        {"policy": "fixed", "version": "2"}, {"policy": "fixed", "version": "2"}, {"2"}, id="fixed"
    ),
    pytest.param(
        {"policy": "fixed", "version": 12},
        {"policy": "fixed", "version": "12"},
        {"12"},
        id="fixed-int-version",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": 90, "2": 10}},
        {"policy": "canary", "weights": {"1": 90.0, "2": 10.0}},
        {"1", "2"},
        id="canary",
    ),
    pytest.param(
        {"policy": "canary", "weights": {1: 90, 2: 10}},
        {"policy": "canary", "weights": {"1": 90.0, "2": 10.0}},
        {"1", "2"},
        id="canary-int-keys",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": 2.5, "2": 0}},
        {"policy": "canary", "weights": {"1": 2.5, "2": 0.0}},
        {"1", "2"},
        id="canary-a-zero-weight",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": 50, "2": 30, "3": 20}},
        {"policy": "canary", "weights": {"1": 50.0, "2": 30.0, "3": 20.0}},
        {"1", "2", "3"},
        id="canary-three-versions",
    ),
    pytest.param(
        {"policy": "blue_green", "live": "1", "staged": "2"},
        {"policy": "blue_green", "live": "1", "staged": "2"},
        {"1", "2"},
        id="blue-green",
    ),
    pytest.param(
        {"policy": "blue_green", "live": 3},
        {"policy": "blue_green", "live": "3"},
        {"3"},
        id="blue-green-nothing-staged",
    ),
    pytest.param(
        {"policy": "bandit", "arms": ["1", "2"]},
        {"policy": "bandit", "arms": ["1", "2"]},
        {"1", "2"},
        id="bandit-minimal",
    ),
    pytest.param(
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
        {"1", "2", "3"},
        id="bandit-epsilon-greedy-int-arms",
    ),
    pytest.param(
        {"policy": "bandit", "algorithm": "ucb1", "arms": ["2", "1"], "reward": "binary"},
        {"policy": "bandit", "algorithm": "ucb1", "arms": ["2", "1"], "reward": "binary"},
        {"1", "2"},
        id="bandit-ucb1-order-kept",
    ),
    pytest.param(
        {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]},
        {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]},
        {"1", "2"},
        id="bandit-thompson",
    ),
    pytest.param(
        {"policy": "rollout", "stable": 1, "canary": 2},
        {"policy": "rollout", "stable": "1", "canary": "2"},
        {"1", "2"},
        id="rollout-defaults",
    ),
    pytest.param(
        {
            "policy": "rollout",
            "stable": "1",
            "canary": "2",
            "steps": [10, 50, 100],
            "step_interval_s": 0.5,
            "min_requests": 20,
            "max_error_rate_increase": 0,
            "max_p99_ratio": 2,
        },
        {
            "policy": "rollout",
            "stable": "1",
            "canary": "2",
            "steps": [10.0, 50.0, 100.0],
            "step_interval_s": 0.5,
            "min_requests": 20,
            "max_error_rate_increase": 0.0,
            "max_p99_ratio": 2.0,
        },
        {"1", "2"},
        id="rollout-everything",
    ),
    pytest.param(
        {"policy": "latest", "shadow": {"version": 3}},
        {"policy": "latest", "shadow": {"version": "3", "rate": 1.0, "max_inflight": 64}},
        {"3"},
        id="latest-with-shadow-defaults",
    ),
    pytest.param(
        {
            "policy": "canary",
            "weights": {"1": 90, "2": 10},
            "shadow": {"version": "3", "rate": 0.25, "max_inflight": 5},
        },
        {
            "policy": "canary",
            "weights": {"1": 90.0, "2": 10.0},
            "shadow": {"version": "3", "rate": 0.25, "max_inflight": 5},
        },
        {"1", "2", "3"},
        id="canary-with-shadow",
    ),
    pytest.param(
        {"policy": "fixed", "version": "1", "shadow": {"version": "1", "rate": 0}},
        {
            "policy": "fixed",
            "version": "1",
            "shadow": {"version": "1", "rate": 0.0, "max_inflight": 64},
        },
        {"1"},
        id="shadow-of-itself-rate-zero",
    ),
    pytest.param(
        {"policy": "latest", "shadow": None},
        {"policy": "latest"},
        set(),
        id="shadow-null",
    ),
]


@pytest.mark.parametrize(("data", "document", "versions"), VALID)
def test_valid_routes(data: dict[str, Any], document: dict[str, Any], versions: set[str]) -> None:
    route = parse_route(data)

    assert route.document() == document
    assert route.versions() == versions


@pytest.mark.parametrize(("data", "document", "versions"), VALID)
def test_document_round_trip(
    data: dict[str, Any], document: dict[str, Any], versions: set[str]
) -> None:
    route = parse_route(data)

    again = parse_route(route.document())

    assert again == route
    assert again.document() == route.document()


YAML = [
    pytest.param(
        "policy: canary\nweights: {1: 90, 2: 10}\nshadow: {version: 3, rate: 0.5}\n",
        {
            "policy": "canary",
            "weights": {"1": 90.0, "2": 10.0},
            "shadow": {"version": "3", "rate": 0.5, "max_inflight": 64},
        },
        id="canary-int-keys-and-shadow",
    ),
    pytest.param(
        "policy: bandit\narms: [1, 2]\nalgorithm: ucb1\n",
        {"policy": "bandit", "arms": ["1", "2"], "algorithm": "ucb1"},
        id="bandit-int-arms",
    ),
    pytest.param(
        "policy: blue_green\nlive: 1\nstaged: 2\n",
        {"policy": "blue_green", "live": "1", "staged": "2"},
        id="blue-green-int-versions",
    ),
    pytest.param(
        "policy: rollout\nstable: 1\ncanary: 2\nsteps: [5, 100]\n",
        {"policy": "rollout", "stable": "1", "canary": "2", "steps": [5.0, 100.0]},
        id="rollout-int-versions",
    ),
    pytest.param(
        "policy: fixed\nversion: 7\n", {"policy": "fixed", "version": "7"}, id="fixed-int"
    ),
]


@pytest.mark.parametrize(("text", "document"), YAML)
def test_routes_from_yaml(text: str, document: dict[str, Any]) -> None:
    assert parse_route(yaml.safe_load(text)).document() == document


INVALID: list[Any] = [
    pytest.param(
        {"policy": "canary", "weights": {"1": -1, "2": 10}},
        "weights['1']: Input should be greater than or equal to 0",
        id="negative-weight",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": 0, "2": 0}},
        "weights: at least one weight must be positive",
        id="all-zero-weights",
    ),
    pytest.param(
        {"policy": "canary", "weights": {}},
        "weights: a canary splits traffic between at least two versions "
        "(policy fixed sends it all to one)",
        id="no-weights",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"2": 100}},
        "weights: a canary splits traffic between at least two versions "
        "(policy fixed sends it all to one)",
        id="one-version",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": "90", "2": 10}},
        "weights['1']: Input should be a valid number",
        id="text-weight",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": True, "2": 10}},
        "weights['1']: Input should be a valid number",
        id="boolean-weight",
    ),
    pytest.param(
        {"policy": "latest", "shadow": {"version": "2", "rate": "0.5"}},
        "shadow.rate: Input should be a valid number",
        id="text-shadow-rate",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": math.nan}},
        "weights['1']: Input should be a finite number",
        id="nan-weight",
    ),
    pytest.param(
        {"policy": "canary", "weights": [90, 10]},
        "weights: Input should be a valid dictionary",
        id="weights-not-a-map",
    ),
    pytest.param(
        {"policy": "round_robin"},
        "policy: Input should be 'latest', 'fixed', 'canary', 'blue_green', 'bandit' or 'rollout'",
        id="unknown-policy",
    ),
    pytest.param(
        {"policy": "LATEST"},
        "policy: Input should be 'latest', 'fixed', 'canary', 'blue_green', 'bandit' or 'rollout'",
        id="policy-case-matters",
    ),
    pytest.param({"weights": {"1": 1}}, "policy: required", id="no-policy"),
    pytest.param({}, "policy: required", id="empty-object"),
    pytest.param(
        {"policy": "latest", "version": "1"},
        "version: not used by policy latest",
        id="latest-with-version",
    ),
    pytest.param(
        {"policy": "fixed", "version": "1", "weights": {"1": 1}},
        "weights: not used by policy fixed",
        id="fixed-with-weights",
    ),
    pytest.param(
        {"policy": "canary", "weights": {"1": 1}, "live": "1", "arms": ["1", "2"]},
        "arms, live: not used by policy canary",
        id="canary-with-two-foreign-fields",
    ),
    pytest.param(
        {"policy": "blue_green", "live": "1", "stable": "2"},
        "stable: not used by policy blue_green",
        id="blue-green-with-rollout-field",
    ),
    pytest.param(
        {"policy": "bandit", "arms": ["1", "2"], "steps": [1, 100]},
        "steps: not used by policy bandit",
        id="bandit-with-steps",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "epsilon": 0.1},
        "epsilon: not used by policy rollout",
        id="rollout-with-epsilon",
    ),
    pytest.param({"policy": "fixed"}, "version: required by policy fixed", id="fixed-no-version"),
    pytest.param(
        {"policy": "fixed", "version": None},
        "version: required by policy fixed",
        id="fixed-null-version",
    ),
    pytest.param(
        {"policy": "canary"}, "weights: required by policy canary", id="canary-no-weights"
    ),
    pytest.param(
        {"policy": "blue_green", "staged": "2"},
        "live: required by policy blue_green",
        id="blue-green-no-live",
    ),
    pytest.param({"policy": "bandit"}, "arms: required by policy bandit", id="bandit-no-arms"),
    pytest.param(
        {"policy": "rollout"},
        "canary, stable: required by policy rollout",
        id="rollout-no-versions",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1"},
        "canary: required by policy rollout",
        id="rollout-no-canary",
    ),
    pytest.param(
        {"policy": "bandit", "arms": ["1", "1"]},
        "arms: each version at most once",
        id="duplicate-arms",
    ),
    pytest.param(
        {"policy": "bandit", "arms": [2, "2"]},
        "arms: each version at most once",
        id="duplicate-arms-int-and-text",
    ),
    pytest.param(
        {"policy": "bandit", "arms": ["1"]},
        "arms: List should have at least 2 items after validation, not 1",
        id="one-arm",
    ),
    pytest.param(
        {"policy": "bandit", "arms": ["1", "x"]},
        "arms[1]: must be a positive integer",
        id="arm-not-a-version",
    ),
    pytest.param(
        {"policy": "bandit", "arms": "1,2"}, "arms: Input should be a valid list", id="arms-text"
    ),
    pytest.param(
        {"policy": "bandit", "arms": ["1", "2"], "algorithm": "greedy"},
        "algorithm: Input should be 'epsilon_greedy', 'ucb1' or 'thompson'",
        id="unknown-algorithm",
    ),
    pytest.param(
        {"policy": "bandit", "arms": ["1", "2"], "epsilon": 1.5},
        "epsilon: Input should be less than or equal to 1",
        id="epsilon-over-one",
    ),
    pytest.param(
        {"policy": "bandit", "arms": ["1", "2"], "reward": "ternary"},
        "reward: Input should be 'binary' or 'real'",
        id="unknown-reward-kind",
    ),
    pytest.param(
        {"policy": "blue_green", "live": "1", "staged": "1"},
        "staged: must differ from live",
        id="live-equals-staged",
    ),
    pytest.param(
        {"policy": "blue_green", "live": 1, "staged": "1"},
        "staged: must differ from live",
        id="live-equals-staged-int-and-text",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "2", "canary": "2"},
        "canary: must differ from stable",
        id="stable-equals-canary",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "steps": [50, 5, 100]},
        "steps: must increase",
        id="decreasing-steps",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "steps": []},
        "steps: List should have at least 1 item after validation, not 0",
        id="no-steps",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "steps": [0, 100]},
        "steps[0]: Input should be greater than 0",
        id="zero-step",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "steps": [50, 101]},
        "steps[1]: Input should be less than or equal to 100",
        id="step-over-100",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "step_interval_s": 0},
        "step_interval_s: Input should be greater than 0",
        id="zero-interval",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "min_requests": 0},
        "min_requests: Input should be greater than or equal to 1",
        id="zero-min-requests",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "max_error_rate_increase": 2},
        "max_error_rate_increase: Input should be less than or equal to 1",
        id="error-rate-bound-over-one",
    ),
    pytest.param(
        {"policy": "rollout", "stable": "1", "canary": "2", "max_p99_ratio": 0.5},
        "max_p99_ratio: Input should be greater than or equal to 1",
        id="p99-ratio-under-one",
    ),
    pytest.param(
        {"policy": "latest", "shadow": {"version": "2", "rate": 1.5}},
        "shadow.rate: Input should be less than or equal to 1",
        id="shadow-rate-over-one",
    ),
    pytest.param(
        {"policy": "latest", "shadow": {"version": "2", "rate": -0.1}},
        "shadow.rate: Input should be greater than or equal to 0",
        id="shadow-rate-negative",
    ),
    pytest.param(
        {"policy": "latest", "shadow": {"version": "2", "max_inflight": 0}},
        "shadow.max_inflight: Input should be greater than or equal to 1",
        id="shadow-no-inflight",
    ),
    pytest.param(
        {"policy": "latest", "shadow": {"rate": 0.5}},
        "shadow.version: required",
        id="shadow-without-version",
    ),
    pytest.param(
        {"policy": "latest", "shadow": {"version": "2", "colour": "red"}},
        "shadow.colour: unknown field",
        id="shadow-unknown-key",
    ),
    pytest.param(
        {"policy": "latest", "shadow": "2"},
        "shadow: Input should be a valid dictionary or instance of ShadowConfig",
        id="shadow-not-an-object",
    ),
    pytest.param({"policy": "latest", "colour": "red"}, "colour: unknown field", id="unknown-key"),
    pytest.param(
        {"policy": "fixed", "version": "01"},
        "version: must be a positive integer",
        id="zero-padded-version",
    ),
    pytest.param(
        {"policy": "fixed", "version": 0}, "version: must be a positive integer", id="version-zero"
    ),
    pytest.param(
        {"policy": "fixed", "version": True},
        "version: must be a positive integer",
        id="version-bool",
    ),
    pytest.param(
        {"policy": "fixed", "version": 1.5},
        "version: must be a positive integer",
        id="version-float",
    ),
]


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_routes(data: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_route(data)

    assert caught.value.message == message


@pytest.mark.parametrize(("data", "message"), INVALID)
def test_invalid_routes_name_where(data: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_route(data, "routes.mlp")

    assert caught.value.message == f"routes.mlp.{message}"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(None, id="null"),
        pytest.param([], id="list"),
        pytest.param("latest", id="text"),
        pytest.param(3, id="number"),
        pytest.param([{"policy": "latest"}], id="list-of-route"),
    ],
)
@pytest.mark.parametrize(
    ("where", "message"),
    [
        pytest.param("", "route: must be an object with a 'policy'", id="unnamed"),
        pytest.param("routes.mlp", "routes.mlp: must be an object with a 'policy'", id="named"),
    ],
)
def test_not_an_object(data: Any, where: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_route(data, where)

    assert caught.value.message == message


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_route({"policy": "bandit", "arms": ["1", "2"], "epsilon": 2, "colour": 1})

    assert caught.value.message == (
        "epsilon: Input should be less than or equal to 1; colour: unknown field"
    )


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param({"1": math.inf, "2": 10}, id="infinite"),
        pytest.param({"1": 1e308, "2": 1e308}, id="sum-overflows"),
    ],
)
def test_weights_must_be_finite(weights: dict[str, float]) -> None:
    # YAML's `.inf` (and JSON's `Infinity`, which Python's json module reads) must not make a
    # route that WeightedSplit cannot draw from (random.choices refuses infinite totals).
    with pytest.raises(InvalidInput, match=r"^weights"):
        parse_route({"policy": "canary", "weights": weights})


def test_a_version_given_twice_in_weights_is_refused() -> None:
    # YAML `{1: 90, "1": 10}` names version 1 twice; silently keeping one weight is wrong.
    with pytest.raises(InvalidInput, match=r"^weights"):
        parse_route({"policy": "canary", "weights": {1: 90, "1": 10, "2": 5}})


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        pytest.param("a", "'a'", id="letters"),
        pytest.param("01", "'01'", id="zero-padded"),
        pytest.param(0, "'0'", id="zero"),
    ],
)
def test_a_bad_weight_key_is_named_plainly(key: Any, shown: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_route({"policy": "canary", "weights": {key: 1}})

    message = caught.value.message
    assert message.startswith("weights")
    assert shown in message
    assert message.endswith("must be a positive integer")
    assert "[key]" not in message, message  # pydantic's internal marker leaking into the path


def test_versions_of_every_field() -> None:
    config = RouteConfig(
        policy="rollout", stable="1", canary="2", shadow=ShadowConfig(version="3", rate=0.5)
    )

    assert config.versions() == {"1", "2", "3"}
    assert RouteConfig(policy="latest").versions() == set()
    assert RouteConfig(policy="canary", weights={"4": 0.0, "5": 1.0}).versions() == {"4", "5"}


def test_configs_are_immutable() -> None:
    config = parse_route({"policy": "fixed", "version": "1"})

    with pytest.raises(ValueError, match="frozen"):
        config.version = "2"
