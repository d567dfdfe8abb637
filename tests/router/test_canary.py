"""The weighted split (router/canary.py): random by weight without a routing key, sticky per key
by weighted rendezvous hashing with one, and minimal movement when the weights change.

Shares are checked against 5 standard deviations of the binomial, which a correct split misses
with probability below 1e-6; the seeds (and the hash, for keys) make every run the same anyway.
"""

import math
import random
from collections import Counter

import pytest

from turnout.router.canary import WeightedSplit

DRAWS = 20_000
KEYS = [f"user-{number}" for number in range(DRAWS)]


def within_five_sigma(count: int, total: int, share: float) -> bool:
    expected = total * share
    sigma = math.sqrt(total * share * (1 - share))
    return abs(count - expected) <= 5 * sigma


def split(weights: dict[str, float], seed: int = 7) -> WeightedSplit:
    return WeightedSplit(weights, random.Random(seed))  # noqa: S311 - a test's fixed seed


WEIGHTS = [
    pytest.param({"1": 90.0, "2": 10.0}, id="90-10"),
    pytest.param({"1": 50.0, "2": 50.0}, id="50-50"),
    pytest.param({"1": 99.0, "2": 1.0}, id="99-1"),
    pytest.param({"1": 0.2, "2": 0.8}, id="fractions"),
    pytest.param({"1": 50.0, "2": 30.0, "3": 20.0}, id="three-versions"),
    pytest.param({"3": 1.0, "10": 2.0, "7": 1.0}, id="three-unordered"),
]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_without_a_key_the_draws_follow_the_weights(weights: dict[str, float]) -> None:
    chooser = split(weights)

    counts = Counter(chooser.choose(None) for _ in range(DRAWS))

    total = sum(weights.values())
    assert set(counts) == set(weights)
    for version, weight in weights.items():
        assert within_five_sigma(counts[version], DRAWS, weight / total), (version, counts)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_the_share_of_keys_follows_the_weights(weights: dict[str, float]) -> None:
    chooser = split(weights)

    counts = Counter(chooser.choose(key) for key in KEYS)

    total = sum(weights.values())
    for version, weight in weights.items():
        assert within_five_sigma(counts[version], DRAWS, weight / total), (version, counts)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_a_key_always_gets_the_same_version(weights: dict[str, float]) -> None:
    first = split(weights, seed=1)
    second = split(weights, seed=2)  # another generator: keyed choices never draw from it

    chosen = [first.choose(key) for key in KEYS[:2000]]

    assert [first.choose(key) for key in KEYS[:2000]] == chosen
    assert [second.choose(key) for key in KEYS[:2000]] == chosen


def test_the_order_of_the_weights_does_not_move_keys() -> None:
    forward = split({"1": 70.0, "2": 20.0, "3": 10.0})
    backward = split({"3": 10.0, "2": 20.0, "1": 70.0})

    assert [forward.choose(key) for key in KEYS[:5000]] == [
        backward.choose(key) for key in KEYS[:5000]
    ]


def test_scaling_every_weight_moves_no_key() -> None:
    percent = split({"1": 90.0, "2": 10.0})
    fraction = split({"1": 0.9, "2": 0.1})

    assert [percent.choose(key) for key in KEYS[:5000]] == [
        fraction.choose(key) for key in KEYS[:5000]
    ]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(5.0, 20.0, id="5-to-20"),
        pytest.param(1.0, 50.0, id="1-to-50"),
        pytest.param(20.0, 21.0, id="20-to-21"),
    ],
)
def test_raising_the_canary_moves_keys_only_onto_it(before: float, after: float) -> None:
    old = split({"1": 100.0 - before, "2": before})
    new = split({"1": 100.0 - after, "2": after})

    moves = Counter((old.choose(key), new.choose(key)) for key in KEYS)

    assert moves[("2", "1")] == 0, "a key left the canary"
    share_moved = (after - before) / 100.0
    assert within_five_sigma(moves[("1", "2")], DRAWS, share_moved), moves
    assert moves[("1", "1")] + moves[("1", "2")] + moves[("2", "2")] == DRAWS


def test_lowering_the_canary_moves_keys_only_off_it() -> None:
    old = split({"1": 80.0, "2": 20.0})
    new = split({"1": 95.0, "2": 5.0})

    moves = Counter((old.choose(key), new.choose(key)) for key in KEYS)

    assert moves[("1", "2")] == 0, "a key joined the shrinking canary"
    assert within_five_sigma(moves[("2", "1")], DRAWS, 0.15), moves


def test_a_new_version_takes_keys_from_both_in_proportion() -> None:
    old = split({"1": 80.0, "2": 20.0})
    new = split({"1": 80.0, "2": 20.0, "3": 25.0})  # version 3 gets 20 % of the keys

    moves = Counter((old.choose(key), new.choose(key)) for key in KEYS)

    assert moves[("1", "2")] == moves[("2", "1")] == 0, "keys moved between the old versions"
    assert within_five_sigma(moves[("1", "3")], DRAWS, 0.8 * 0.2), moves
    assert within_five_sigma(moves[("2", "3")], DRAWS, 0.2 * 0.2), moves


@pytest.mark.parametrize("routing_key", [None, "user-1", "user-2", ""])
def test_a_zero_weight_gets_nothing(routing_key: str | None) -> None:
    chooser = split({"1": 0.0, "2": 100.0, "3": 0.0})

    assert chooser.weights == {"2": 100.0}
    assert {chooser.choose(routing_key) for _ in range(500)} == {"2"}


def test_a_zero_weight_gets_no_key() -> None:
    chooser = split({"1": 60.0, "2": 0.0, "3": 40.0})

    counts = Counter(chooser.choose(key) for key in KEYS)

    assert counts["2"] == 0
    assert within_five_sigma(counts["1"], DRAWS, 0.6), counts


def test_draws_are_reproducible_from_the_seed() -> None:
    weights = {"1": 50.0, "2": 30.0, "3": 20.0}
    one, two = split(weights, seed=11), split(weights, seed=11)

    assert [one.choose(None) for _ in range(1000)] == [two.choose(None) for _ in range(1000)]
