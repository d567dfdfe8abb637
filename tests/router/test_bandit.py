"""Bandit routing (router/bandit.py): each algorithm finds the best arm against simulated
rewards, untried arms come first, rewards are validated, and the statistics survive a snapshot.

Every run is seeded (the bandit's generator and the simulated rewards alike), so it is the same
each time; the bounds hold with a wide margin on every seed tried."""

import json
import math
import random
from collections import Counter
from typing import Any

import pytest

from turnout.errors import InvalidInput
from turnout.router.bandit import Algorithm, ArmStats, Bandit, RewardKind, arm_stats

PULLS = 2000
LAST = 500


def rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - a test's fixed seed


def bandit(
    algorithm: Algorithm,
    arms: list[str],
    kind: RewardKind = "binary",
    epsilon: float = 0.1,
    seed: int = 3,
    stats: dict[str, ArmStats] | None = None,
) -> Bandit:
    return Bandit(algorithm, arms, kind, epsilon, rng(seed), stats)


def simulate(
    chooser: Bandit, payouts: dict[str, float], kind: RewardKind, seed: int, pulls: int = PULLS
) -> list[str]:
    """Pull ``pulls`` times, rewarding each pull at once: 0/1 with probability ``payouts[arm]``
    for binary routes, a normal around it (sd 0.5) for real ones. Returns the arms pulled."""
    world = rng(seed)
    pulled = []
    for _ in range(pulls):
        arm = chooser.choose()
        pulled.append(arm)
        if kind == "binary":
            chooser.reward(arm, 1.0 if world.random() < payouts[arm] else 0.0)
        else:
            chooser.reward(arm, world.gauss(payouts[arm], 0.5))
    return pulled


CONVERGENCE = [
    pytest.param(algorithm, kind, payouts, best, seed, id=f"{algorithm}-{kind}-{name}-seed{seed}")
    for algorithm, kind in [
        ("epsilon_greedy", "binary"),
        ("epsilon_greedy", "real"),
        ("ucb1", "binary"),
        ("ucb1", "real"),
        ("thompson", "binary"),
        ("thompson", "real"),
    ]
    for name, payouts, best in [
        ("2-best", {"1": 0.3, "2": 0.7}, "2"),
        ("1-best", {"1": 0.7, "2": 0.3}, "1"),
        ("three-arms", {"1": 0.2, "2": 0.5, "3": 0.8}, "3"),
    ]
    for seed in (1, 2)
]


@pytest.mark.parametrize(("algorithm", "kind", "payouts", "best", "seed"), CONVERGENCE)
def test_converges_to_the_best_arm(
    algorithm: Algorithm, kind: RewardKind, payouts: dict[str, float], best: str, seed: int
) -> None:
    chooser = bandit(algorithm, list(payouts), kind, seed=seed)

    pulled = simulate(chooser, payouts, kind, seed=100 + seed)

    last = Counter(pulled[-LAST:])
    assert last[best] >= 0.8 * LAST, last
    estimates = chooser.estimates()
    assert max(estimates, key=lambda arm: estimates[arm]) == best, estimates
    assert sum(stats.pulls for stats in chooser.stats.values()) == PULLS
    assert sum(stats.rewards for stats in chooser.stats.values()) == PULLS


def test_ucb1_tries_every_arm_first_in_order() -> None:
    chooser = bandit("ucb1", ["3", "1", "2"])

    assert [chooser.choose() for _ in range(3)] == ["3", "1", "2"]
    assert {arm: stats.pulls for arm, stats in chooser.stats.items()} == {"3": 1, "1": 1, "2": 1}


def test_ucb1_counts_pulls_not_rewards() -> None:
    # UCB1 counts pulls, not rewards: an arm pulled once is tried even before its reward comes.
    chooser = bandit("ucb1", ["1", "2"])
    chooser.choose()

    assert chooser.choose() == "2"


@pytest.mark.parametrize("seed", range(5))
def test_epsilon_greedy_tries_each_arm_until_it_has_a_reward(seed: int) -> None:
    chooser = bandit("epsilon_greedy", ["1", "2", "3"], epsilon=0.0, seed=seed)
    for _ in range(5):
        chooser.reward("1", 1.0)  # arm 1 pays well; 2 and 3 have never been rewarded

    first = [chooser.choose() for _ in range(50)]
    assert set(first) == {"2", "3"}, "an untried arm waited behind the best one"

    chooser.reward("2", 0.0)
    assert {chooser.choose() for _ in range(50)} == {"3"}

    chooser.reward("3", 0.0)
    assert {chooser.choose() for _ in range(50)} == {"1"}, "epsilon 0 exploits only"


def test_epsilon_greedy_explores_about_epsilon_of_the_time() -> None:
    chooser = bandit("epsilon_greedy", ["1", "2"], epsilon=0.2, seed=5)
    chooser.reward("1", 1.0)
    chooser.reward("2", 0.0)

    pulled = Counter(chooser.choose() for _ in range(10_000))

    # Arm 2 only when exploring (epsilon) and the random arm is 2 (half of those): 10 %.
    share, total = 0.1, 10_000
    assert abs(pulled["2"] - share * total) <= 5 * math.sqrt(total * share * (1 - share)), pulled


def test_thompson_with_no_rewards_spreads_over_the_arms() -> None:
    chooser = bandit("thompson", ["1", "2"], seed=9)

    pulled = Counter(chooser.choose() for _ in range(4000))

    assert abs(pulled["1"] - 2000) <= 5 * math.sqrt(4000 * 0.25), pulled


def test_ties_are_broken_at_random() -> None:
    chooser = bandit("epsilon_greedy", ["1", "2"], epsilon=0.0, seed=4)
    chooser.reward("1", 1.0)
    chooser.reward("2", 1.0)

    assert set(Counter(chooser.choose() for _ in range(200))) == {"1", "2"}


REWARDS = [
    pytest.param("binary", 0.0, None, id="binary-zero"),
    pytest.param("binary", 1.0, None, id="binary-one"),
    pytest.param("binary", 1, None, id="binary-int-one"),
    pytest.param("binary", 0.5, "this route takes rewards of 0 or 1", id="binary-half"),
    pytest.param("binary", 2.0, "this route takes rewards of 0 or 1", id="binary-two"),
    pytest.param("binary", -1.0, "this route takes rewards of 0 or 1", id="binary-negative"),
    pytest.param("binary", math.nan, "reward must be a finite number", id="binary-nan"),
    pytest.param("binary", math.inf, "reward must be a finite number", id="binary-inf"),
    pytest.param("real", 0.5, None, id="real-half"),
    pytest.param("real", -3.25, None, id="real-negative"),
    pytest.param("real", 1e6, None, id="real-large"),
    pytest.param("real", math.nan, "reward must be a finite number", id="real-nan"),
    pytest.param("real", math.inf, "reward must be a finite number", id="real-inf"),
    pytest.param("real", -math.inf, "reward must be a finite number", id="real-minus-inf"),
]


@pytest.mark.parametrize(("kind", "value", "problem"), REWARDS)
def test_reward_validation(kind: RewardKind, value: float, problem: str | None) -> None:
    chooser = bandit("thompson", ["1", "2"], kind)

    if problem is None:
        chooser.check_reward(value)
        chooser.reward("2", value)
        assert chooser.stats["2"] == ArmStats(0, 1, value, value * value)
        return
    with pytest.raises(InvalidInput) as checked:
        chooser.check_reward(value)
    with pytest.raises(InvalidInput) as rewarded:
        chooser.reward("2", value)
    assert checked.value.message == rewarded.value.message == problem
    assert chooser.stats["2"] == ArmStats(), "a refused reward was counted"


@pytest.mark.parametrize(
    ("rewards", "mean", "variance"),
    [
        pytest.param([], 0.0, 1.0, id="none"),
        pytest.param([0.25], 0.25, 1.0, id="one"),
        pytest.param([1.0, 0.0], 0.5, 0.5, id="two"),
        pytest.param([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 5.0, 32.0 / 7.0, id="eight"),
        pytest.param([3.0, 3.0, 3.0], 3.0, 0.0, id="constant"),
    ],
)
def test_arm_mean_and_variance(rewards: list[float], mean: float, variance: float) -> None:
    chooser = bandit("thompson", ["1", "2"], "real")
    for value in rewards:
        chooser.reward("1", value)

    assert chooser.stats["1"].mean == pytest.approx(mean, rel=1e-12)
    assert chooser.stats["1"].variance == pytest.approx(variance, rel=1e-12, abs=1e-12)
    assert chooser.estimates() == {"1": chooser.stats["1"].mean, "2": 0.0}


def test_snapshot_round_trip() -> None:
    chooser = bandit("thompson", ["1", "2", "3"], "real")
    simulate(chooser, {"1": 0.1, "2": 0.4, "3": 0.2}, "real", seed=8, pulls=300)

    snapshot = json.loads(json.dumps(chooser.snapshot()))  # as it is persisted
    restored_stats = {arm: arm_stats(document) for arm, document in snapshot.items()}
    restored = bandit("thompson", ["1", "2", "3"], "real", stats=restored_stats)

    assert restored.snapshot() == chooser.snapshot()
    assert restored.estimates() == chooser.estimates()
    assert set(snapshot["1"]) == {"pulls", "rewards", "total", "total_squares"}


def test_saved_stats_for_other_arms_are_ignored_and_new_arms_start_empty() -> None:
    saved = {"1": ArmStats(10, 8, 6.0, 6.0), "9": ArmStats(5, 5, 5.0, 5.0)}

    chooser = bandit("thompson", ["1", "2"], stats=saved)

    assert chooser.stats == {"1": ArmStats(10, 8, 6.0, 6.0), "2": ArmStats()}


def test_arm_stats_reads_numbers_written_as_text() -> None:
    document = {"pulls": "3", "rewards": 2, "total": "1.5", "total_squares": 1.25}

    assert arm_stats(document) == ArmStats(3, 2, 1.5, 1.25)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"pulls": "many", "rewards": 0, "total": 0, "total_squares": 0}, id="text"),
        pytest.param({"pulls": 1, "rewards": 0, "total": "x", "total_squares": 0}, id="bad-total"),
        pytest.param({"pulls": 1, "rewards": 0, "total": None, "total_squares": 0}, id="null"),
        pytest.param({"pulls": 1, "rewards": 0, "total": 0}, id="missing-field"),
    ],
)
def test_arm_stats_refuses_malformed_documents(document: dict[str, Any]) -> None:
    # The router's restore() treats any of these as "state not applied".
    with pytest.raises((ValueError, TypeError, KeyError)):
        arm_stats(document)


def test_choosing_counts_pulls() -> None:
    chooser = bandit("ucb1", ["1", "2"])

    pulled = Counter(chooser.choose() for _ in range(10))

    assert {arm: stats.pulls for arm, stats in chooser.stats.items()} == dict(pulled)
    assert all(stats.rewards == 0 for stats in chooser.stats.values())
