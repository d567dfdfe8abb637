"""The guarded rollout (router/rollout.py): its decisions on constructed traffic windows, its
share of traffic in each status, and its defaults."""

from typing import Any

import pytest

from turnout.router.ledger import Window
from turnout.router.rollout import (
    DEFAULT_MAX_ERROR_RATE_INCREASE,
    DEFAULT_MAX_P99_RATIO,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_STEP_INTERVAL_S,
    DEFAULT_STEPS,
    Rollout,
    RolloutState,
)
from turnout.router.specs import RouteConfig, parse_route

START = 1000.0  # the monotonic instant the current step began, in every test
INTERVAL = 30.0


def rollout(state: RolloutState | None = None, **fields: Any) -> Rollout:
    config = parse_route(
        {
            "policy": "rollout",
            "stable": "1",
            "canary": "2",
            "steps": [5, 25, 100],
            "step_interval_s": INTERVAL,
            "min_requests": 100,
            "max_error_rate_increase": 0.02,
            "max_p99_ratio": 1.5,
            **fields,
        }
    )
    return Rollout(config, state or RolloutState(step_started=START))


def window(
    requests: int = 200, errors: int = 0, p99_s: float | None = 0.010, p50_s: float = 0.005
) -> Window:
    return Window(requests, errors, p50_s, p99_s, p99_s)


HEALTHY = window()

DECISIONS = [
    pytest.param(window(requests=99), HEALTHY, START + 1e6, None, 0, id="below-min-requests"),
    pytest.param(
        window(requests=99, errors=99),
        HEALTHY,
        START + 1e6,
        None,
        0,
        id="below-min-requests-even-if-failing",
    ),
    pytest.param(window(requests=0, p99_s=None), HEALTHY, START + 1e6, None, 0, id="no-requests"),
    pytest.param(HEALTHY, HEALTHY, START + INTERVAL - 0.001, None, 0, id="step-not-over"),
    pytest.param(HEALTHY, HEALTHY, START + INTERVAL, "advance", 1, id="advance-at-interval"),
    pytest.param(window(requests=100), HEALTHY, START + 1e6, "advance", 1, id="advance-at-min"),
    pytest.param(
        window(errors=4), window(errors=2), START + INTERVAL, "advance", 1, id="errors-in-bound"
    ),
    pytest.param(
        window(p99_s=0.0149), HEALTHY, START + INTERVAL, "advance", 1, id="p99-ratio-within-bound"
    ),
    pytest.param(
        window(p99_s=None), window(p99_s=None), START + INTERVAL, "advance", 1, id="no-latencies"
    ),
    pytest.param(
        window(p99_s=1.0),
        window(requests=99, p99_s=0.010),
        START + INTERVAL,
        "advance",
        1,
        id="slow-but-stable-has-too-few-requests",
    ),
    pytest.param(
        window(p99_s=1.0),
        window(requests=0, p99_s=None),
        START + INTERVAL,
        "advance",
        1,
        id="slow-but-stable-has-none",
    ),
    pytest.param(window(errors=10), HEALTHY, START, "rollback", 0, id="error-rate-before-interval"),
    pytest.param(
        window(errors=7), window(errors=2), START + INTERVAL, "rollback", 0, id="error-increase"
    ),
    pytest.param(window(p99_s=0.016), HEALTHY, START, "rollback", 0, id="p99-ratio-beyond-bound"),
    pytest.param(
        window(requests=100, p99_s=0.5),
        window(requests=100, p99_s=0.1),
        START,
        "rollback",
        0,
        id="p99-with-stable-at-min",
    ),
]


@pytest.mark.parametrize(("canary", "stable", "now", "decision", "step"), DECISIONS)
def test_decisions(
    canary: Window, stable: Window, now: float, decision: str | None, step: int
) -> None:
    guarded = rollout()

    assert guarded.evaluate(canary, stable, now) == decision

    assert guarded.state.step == step
    expected_status = "rolled_back" if decision == "rollback" else "running"
    assert guarded.state.status == expected_status
    assert guarded.state.step_started == (now if decision == "advance" else START)


def test_rollback_on_error_rate_says_why() -> None:
    guarded = rollout()

    assert guarded.evaluate(window(errors=10), window(errors=1), START) == "rollback"

    assert guarded.state.reason == (
        "canary error rate 5.00% exceeds the stable's 0.50% by more than 2.00%"
    )
    assert guarded.percent == 0.0
    assert guarded.weights() == {"1": 100.0, "2": 0.0}


def test_rollback_on_p99_says_why() -> None:
    guarded = rollout()

    assert guarded.evaluate(window(p99_s=0.0321), window(p99_s=0.020), START) == "rollback"

    assert guarded.state.reason == "canary p99 32.1 ms exceeds 1.5x the stable's 20.0 ms"


def test_a_fewer_errors_canary_is_fine() -> None:
    guarded = rollout(max_error_rate_increase=0)

    assert guarded.evaluate(HEALTHY, window(errors=50), START + INTERVAL) == "advance"


def test_zero_error_increase_allowed_rolls_back_on_one_error() -> None:
    guarded = rollout(max_error_rate_increase=0)

    assert guarded.evaluate(window(errors=1), HEALTHY, START) == "rollback"


def test_steps_then_complete() -> None:
    guarded = rollout()
    now = START
    seen = [(guarded.state.status, guarded.percent)]

    for expected in ("advance", "advance", "complete"):
        assert guarded.evaluate(HEALTHY, HEALTHY, now + INTERVAL / 2) is None
        now += INTERVAL
        assert guarded.evaluate(HEALTHY, HEALTHY, now) == expected
        seen.append((guarded.state.status, guarded.percent))

    assert seen == [
        ("running", 5.0),
        ("running", 25.0),
        ("running", 100.0),
        ("completed", 100.0),
    ]
    assert guarded.state.reason == "every step passed"
    assert guarded.weights() == {"1": 0.0, "2": 100.0}
    assert guarded.evaluate(window(errors=200), HEALTHY, now + 1e6) is None, "judged after the end"


def test_a_rolled_back_rollout_stays_rolled_back() -> None:
    guarded = rollout()
    assert guarded.evaluate(window(errors=100), HEALTHY, START) == "rollback"

    assert guarded.evaluate(HEALTHY, HEALTHY, START + 1e6) is None
    assert guarded.state.status == "rolled_back"
    assert guarded.percent == 0.0


@pytest.mark.parametrize(
    ("state", "percent", "weights"),
    [
        pytest.param(RolloutState(0, "running"), 5.0, {"1": 95.0, "2": 5.0}, id="first-step"),
        pytest.param(RolloutState(1, "running"), 25.0, {"1": 75.0, "2": 25.0}, id="second-step"),
        pytest.param(RolloutState(2, "running"), 100.0, {"1": 0.0, "2": 100.0}, id="last-step"),
        pytest.param(RolloutState(1, "completed"), 100.0, {"1": 0.0, "2": 100.0}, id="completed"),
        pytest.param(RolloutState(1, "rolled_back"), 0.0, {"1": 100.0, "2": 0.0}, id="rolled-back"),
        pytest.param(RolloutState(9, "running"), 100.0, {"1": 0.0, "2": 100.0}, id="step-clamped"),
    ],
)
def test_percent_and_weights(
    state: RolloutState, percent: float, weights: dict[str, float]
) -> None:
    guarded = rollout(state)

    assert guarded.percent == percent
    assert guarded.weights() == weights


def test_defaults() -> None:
    guarded = Rollout(RouteConfig(policy="rollout", stable="3", canary="4"))

    assert (guarded.stable, guarded.canary) == ("3", "4")
    assert guarded.steps == DEFAULT_STEPS == (1.0, 5.0, 25.0, 50.0, 100.0)
    assert guarded.step_interval_s == DEFAULT_STEP_INTERVAL_S == 60.0
    assert guarded.min_requests == DEFAULT_MIN_REQUESTS == 50
    assert guarded.max_error_rate_increase == DEFAULT_MAX_ERROR_RATE_INCREASE == 0.01
    assert guarded.max_p99_ratio == DEFAULT_MAX_P99_RATIO == 1.5
    assert guarded.state.step == 0
    assert guarded.state.status == "running"
    assert guarded.state.step_started > 0, "a fresh rollout starts its step now"
    assert guarded.percent == 1.0


def test_default_bounds_decide() -> None:
    guarded = Rollout(RouteConfig(policy="rollout", stable="1", canary="2"))
    started = guarded.state.step_started

    assert guarded.evaluate(window(requests=49), HEALTHY, started + 61) is None
    assert guarded.evaluate(window(requests=50), HEALTHY, started + 59) is None
    assert guarded.evaluate(window(requests=50), HEALTHY, started + 60) == "advance"
    assert guarded.percent == 5.0
    assert guarded.evaluate(window(errors=3), HEALTHY, started + 61) == "rollback"


def test_a_restored_state_starts_its_step_afresh() -> None:
    guarded = rollout(RolloutState(step=1, status="running", reason=""))

    assert guarded.state.step == 1
    assert guarded.state.step_started > 0


def test_a_route_of_another_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="names its stable and canary"):
        Rollout(RouteConfig(policy="fixed", version="1"))
