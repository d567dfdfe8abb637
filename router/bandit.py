"""Bandit routing: versions are arms, and rewards fed back for the requests they served steer
traffic toward the best one.

- ``epsilon_greedy``: a random arm with probability epsilon, else the best mean reward;
- ``ucb1``: the best mean plus sqrt(2 ln N / n), every arm tried once first;
- ``thompson``: a draw from each arm's posterior, the best draw wins: Beta(1 + successes,
  1 + failures) for 0/1 rewards, a normal around the mean reward for real rewards.
"""

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from turnout.errors import InvalidInput

Algorithm = Literal["epsilon_greedy", "ucb1", "thompson"]
RewardKind = Literal["binary", "real"]
DEFAULT_EPSILON = 0.1


@dataclass(slots=True)
class ArmStats:
    """What one arm has been given and earned."""

    pulls: int = 0
    rewards: int = 0
    total: float = 0.0
    total_squares: float = 0.0

    @property
    def mean(self) -> float:
        """The mean reward, 0 before any."""
        return self.total / self.rewards if self.rewards else 0.0

    @property
    def variance(self) -> float:
        """The sample variance of the rewards, 1 while there are fewer than two."""
        if self.rewards < 2:
            return 1.0
        return max(0.0, (self.total_squares - self.total**2 / self.rewards) / (self.rewards - 1))


class Bandit:
    """Chooses among arms and learns from rewards."""

    def __init__(
        self,
        algorithm: Algorithm,
        arms: list[str],
        reward_kind: RewardKind,
        epsilon: float,
        rng: random.Random,
        stats: dict[str, ArmStats] | None = None,
    ) -> None:
        """``stats`` is the endpoint's record of every arm ever pulled; the bandit reads and adds
        to it (arms it lacks are added), so what a route learned outlives route changes."""
        self.algorithm = algorithm
        self.arms = arms
        self.reward_kind = reward_kind
        self.epsilon = epsilon
        self._rng = rng
        shared = stats if stats is not None else {}
        for arm in arms:
            shared.setdefault(arm, ArmStats())
        self.stats = {arm: shared[arm] for arm in arms}

    def choose(self) -> str:
        """The arm for the next request (counted as a pull)."""
        arm = {
            "epsilon_greedy": self._epsilon_greedy,
            "ucb1": self._ucb1,
            "thompson": self._thompson,
        }[self.algorithm]()
        self.stats[arm].pulls += 1
        return arm

    def check_reward(self, value: float) -> None:
        """InvalidInput unless ``value`` is a reward this bandit takes."""
        if not math.isfinite(value):
            raise InvalidInput("reward must be a finite number")
        if self.reward_kind == "binary" and value not in (0, 1):
            raise InvalidInput("this route takes rewards of 0 or 1")

    def reward(self, arm: str, value: float) -> None:
        """Credit ``arm`` with a reward; InvalidInput for a value the bandit refuses."""
        self.check_reward(value)
        stats = self.stats[arm]
        stats.rewards += 1
        stats.total += value
        stats.total_squares += value * value

    def estimates(self) -> dict[str, float]:
        """Each arm's mean reward so far."""
        return {arm: stats.mean for arm, stats in self.stats.items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The statistics, for persistence and the admin API."""
        return {arm: asdict(stats) for arm, stats in self.stats.items()}

    def _best(self, score: dict[str, float]) -> str:
        top = max(score.values())
        return self._rng.choice([arm for arm, value in score.items() if value == top])

    def _epsilon_greedy(self) -> str:
        untried = [arm for arm, stats in self.stats.items() if stats.rewards == 0]
        if untried:
            return self._rng.choice(untried)
        if self._rng.random() < self.epsilon:
            return self._rng.choice(self.arms)
        return self._best(self.estimates())

    def _ucb1(self) -> str:
        untried = [arm for arm, stats in self.stats.items() if stats.pulls == 0]
        if untried:
            return untried[0]
        pulls = sum(stats.pulls for stats in self.stats.values())
        bonus = 2 * math.log(pulls)
        return self._best(
            {arm: s.mean + math.sqrt(bonus / s.pulls) for arm, s in self.stats.items()}
        )

    def _thompson(self) -> str:
        draws = {}
        for arm, stats in self.stats.items():
            if self.reward_kind == "binary":
                draws[arm] = self._rng.betavariate(1 + stats.total, 1 + stats.rewards - stats.total)
            else:
                spread = math.sqrt(stats.variance / max(stats.rewards, 1))
                draws[arm] = self._rng.gauss(stats.mean, spread)
        return self._best(draws)


def arm_stats(document: dict[str, Any]) -> ArmStats:
    """Statistics read back from a snapshot; ValueError when malformed."""
    return ArmStats(
        pulls=int(document["pulls"]),
        rewards=int(document["rewards"]),
        total=float(document["total"]),
        total_squares=float(document["total_squares"]),
    )
