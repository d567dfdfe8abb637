"""An endpoint's route at run time: its config and the policy that chooses a version for each
request (one file per policy: canary.py, bandit.py, rollout.py; blue-green and fixed routes are
simple enough to live here)."""

import random
from dataclasses import dataclass

from turnout.router.bandit import DEFAULT_EPSILON, ArmStats, Bandit
from turnout.router.canary import WeightedSplit
from turnout.router.rollout import Rollout, RolloutState
from turnout.router.specs import RouteConfig


@dataclass(slots=True)
class Route:
    """A validated route and what it needs to choose."""

    config: RouteConfig
    latest: str
    rng: random.Random
    split: WeightedSplit | None = None
    bandit: Bandit | None = None
    rollout: Rollout | None = None

    def choose(self, routing_key: str | None) -> str:
        """The version for one request."""
        policy = self.config.policy
        if policy == "latest":
            return self.latest
        if policy == "fixed" and self.config.version is not None:
            return self.config.version
        if policy == "blue_green" and self.config.live is not None:
            return self.config.live
        if self.bandit is not None:
            return self.bandit.choose()
        if self.rollout is not None:
            self.split = self._rollout_split(self.rollout)
        if self.split is None:
            raise RuntimeError(f"route {self.config.policy} has nothing to choose with")
        return self.split.choose(routing_key)

    def primary(self) -> str:
        """The version that speaks for the endpoint in metadata: the one most traffic goes to."""
        config = self.config
        if config.policy == "fixed" and config.version is not None:
            return config.version
        if config.policy == "blue_green" and config.live is not None:
            return config.live
        bandit = self.bandit
        if bandit is not None:
            estimates = bandit.estimates()
            return max(bandit.arms, key=lambda arm: (estimates[arm], -bandit.arms.index(arm)))
        weights = self.rollout.weights() if self.rollout else (config.weights or {})
        if weights:
            return max(weights, key=lambda version: (weights[version], int(version)))
        return self.latest

    def _rollout_split(self, rollout: Rollout) -> WeightedSplit:
        weights = rollout.weights()
        if self.split is None or self.split.weights != {v: w for v, w in weights.items() if w > 0}:
            return WeightedSplit(weights, self.rng)
        return self.split


def build_route(
    config: RouteConfig,
    latest: str,
    rng: random.Random,
    arm_stats: dict[str, ArmStats] | None = None,
    rollout_state: RolloutState | None = None,
) -> Route:
    """The run-time route of a config."""
    route = Route(config, latest, rng)
    if config.policy == "canary" and config.weights is not None:
        route.split = WeightedSplit(config.weights, rng)
    elif config.policy == "bandit" and config.arms is not None:
        route.bandit = Bandit(
            config.algorithm or "thompson",
            list(config.arms),
            config.reward or "binary",
            DEFAULT_EPSILON if config.epsilon is None else config.epsilon,
            rng,
            arm_stats,
        )
    elif config.policy == "rollout":
        route.rollout = Rollout(config, rollout_state)
    return route
