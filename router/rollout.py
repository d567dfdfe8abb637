"""Guarded rollout: a canary whose share steps up on a schedule (by default 1 → 5 → 25 → 50 →
100 %) only while its server-side error rate and p99 latency stay within bounds of the stable
version's, and which rolls itself back as soon as they don't.

The bounds are judged on the requests each version served since the current step began, once the
canary has served ``min_requests`` of them (fewer say too little to act on). A step lasts at least
``step_interval_s``; the last step passed completes the rollout.
"""

import time
from dataclasses import dataclass
from typing import Literal

from turnout.router.ledger import Window
from turnout.router.specs import RouteConfig

DEFAULT_STEPS = (1.0, 5.0, 25.0, 50.0, 100.0)
DEFAULT_STEP_INTERVAL_S = 60.0
DEFAULT_MIN_REQUESTS = 50
DEFAULT_MAX_ERROR_RATE_INCREASE = 0.01
DEFAULT_MAX_P99_RATIO = 1.5

Status = Literal["running", "completed", "rolled_back"]
Decision = Literal["advance", "complete", "rollback"]


@dataclass(slots=True)
class RolloutState:
    """Where a rollout stands."""

    step: int = 0
    status: Status = "running"
    reason: str = ""
    step_started: float = 0.0  # time.monotonic(); a restart starts the step afresh


class Rollout:
    """The schedule and bounds of one route, and its state."""

    def __init__(self, config: RouteConfig, state: RolloutState | None = None) -> None:
        if config.stable is None or config.canary is None:
            raise ValueError("a rollout route names its stable and canary versions")
        self.stable = config.stable
        self.canary = config.canary
        self.steps = tuple(config.steps or DEFAULT_STEPS)
        self.step_interval_s = config.step_interval_s or DEFAULT_STEP_INTERVAL_S
        self.min_requests = config.min_requests or DEFAULT_MIN_REQUESTS
        self.max_error_rate_increase = (
            DEFAULT_MAX_ERROR_RATE_INCREASE
            if config.max_error_rate_increase is None
            else config.max_error_rate_increase
        )
        self.max_p99_ratio = config.max_p99_ratio or DEFAULT_MAX_P99_RATIO
        self.state = state or RolloutState()
        if not self.state.step_started:
            self.state.step_started = time.monotonic()
        self.state.step = min(self.state.step, len(self.steps) - 1)

    @property
    def percent(self) -> float:
        """The canary's share of traffic now, in percent."""
        if self.state.status == "rolled_back":
            return 0.0
        if self.state.status == "completed":
            return 100.0
        return self.steps[self.state.step]

    def weights(self) -> dict[str, float]:
        """The split the route applies now."""
        return {self.stable: 100.0 - self.percent, self.canary: self.percent}

    def evaluate(self, canary: Window, stable: Window, now: float) -> Decision | None:
        """Judge the current step; changes the state and returns what it decided, if anything."""
        state = self.state
        if state.status != "running" or canary.requests < self.min_requests:
            return None
        problem = self._problem(canary, stable)
        if problem:
            state.status, state.reason = "rolled_back", problem
            return "rollback"
        if now - state.step_started < self.step_interval_s:
            return None
        if state.step == len(self.steps) - 1:
            state.status, state.reason = "completed", "every step passed"
            return "complete"
        state.step += 1
        state.step_started = now
        return "advance"

    def _problem(self, canary: Window, stable: Window) -> str:
        increase = canary.error_rate - stable.error_rate
        if increase > self.max_error_rate_increase:
            return (
                f"canary error rate {canary.error_rate:.2%} exceeds the stable's "
                f"{stable.error_rate:.2%} by more than {self.max_error_rate_increase:.2%}"
            )
        if (
            canary.p99_s is not None
            and stable.p99_s is not None
            and stable.requests >= self.min_requests
            and canary.p99_s > self.max_p99_ratio * stable.p99_s
        ):
            return (
                f"canary p99 {canary.p99_s * 1000:.1f} ms exceeds {self.max_p99_ratio:g}x the "
                f"stable's {stable.p99_s * 1000:.1f} ms"
            )
        return ""
