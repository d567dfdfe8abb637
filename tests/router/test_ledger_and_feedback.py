"""What each version served (router/ledger.py): windows, percentiles, error rates and rewards
with their intervals; and which request each version served, for feedback (router/feedback.py)."""

import statistics
import time

import numpy as np
import pytest
from scipy import stats as scipy_stats

from turnout.errors import AlreadyRecorded, ModelNotFound
from turnout.router.feedback import ServedRequests
from turnout.router.ledger import RECENT, Rewards, TrafficLedger, VersionTraffic, Window

Z_95 = 1.959963984540054


class Clock:
    """A stand-in for time.monotonic that the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


# -- the ledger --------------------------------------------------------------------------------


def test_served_requests_are_counted_per_version() -> None:
    ledger = TrafficLedger()
    ledger.served("mlp", "1", 0.010, ok=True)
    ledger.served("mlp", "1", 0.020, ok=False)
    ledger.served("mlp", "2", 0.030, ok=True)
    ledger.served("other", "1", 0.040, ok=True)

    one = ledger.account("mlp", "1")
    assert (one.requests, one.errors) == (2, 1)
    assert (ledger.account("mlp", "2").requests, ledger.account("mlp", "2").errors) == (1, 0)
    assert ledger.account("other", "1").requests == 1
    assert ledger.account("mlp", "1") is one, "an account is opened once"
    assert ledger.account("mlp", "9").requests == 0


def test_window_since_an_instant(clock: Clock) -> None:
    ledger = TrafficLedger()
    for seconds in (0.1, 0.2, 0.3):
        ledger.served("mlp", "1", seconds, ok=False)
        clock.now += 1
    since = clock.now
    for seconds in (0.001, 0.002, 0.003, 0.004):
        ledger.served("mlp", "1", seconds, ok=True)
        clock.now += 1
    ledger.served("mlp", "1", 0.005, ok=False)

    recent = ledger.account("mlp", "1").window(since)
    everything = ledger.account("mlp", "1").window()

    assert recent == Window(5, 1, 0.003, 0.005, 0.005)
    assert recent.error_rate == pytest.approx(0.2)
    assert everything.requests == 8
    assert everything.errors == 4
    assert everything.error_rate == 0.5
    assert ledger.account("mlp", "1").window(clock.now + 1) == Window(0, 0, None, None, None)


def test_a_request_at_the_instant_counts(clock: Clock) -> None:
    ledger = TrafficLedger()
    ledger.served("mlp", "1", 0.1, ok=True)

    assert ledger.account("mlp", "1").window(clock.now).requests == 1


def test_an_empty_window() -> None:
    empty = VersionTraffic().window()

    assert empty == Window(0, 0, None, None, None)
    assert empty.error_rate == 0.0


@pytest.mark.parametrize(
    "latencies",
    [
        pytest.param([0.5], id="one"),
        pytest.param([0.2, 0.1], id="two"),
        pytest.param([float(n) for n in range(1, 101)], id="1-to-100"),
        pytest.param([float(n) for n in range(100, 0, -1)], id="100-to-1"),
        pytest.param([float(n) for n in range(1, 1001)], id="1-to-1000"),
        pytest.param([0.3, 0.1, 0.2, 0.1, 0.9, 0.4, 0.4], id="repeats"),
        pytest.param(list(np.random.default_rng(5).exponential(0.01, 777)), id="exponential-777"),
    ],
)
def test_percentiles_are_nearest_rank(latencies: list[float]) -> None:
    account = VersionTraffic()
    for seconds in latencies:
        account.recent.append((1.0, seconds, True))

    got = account.window()

    for value, q in ((got.p50_s, 50), (got.p90_s, 90), (got.p99_s, 99)):
        assert value == float(np.percentile(latencies, q, method="inverted_cdf")), q


def test_only_the_recent_requests_are_kept_for_windows() -> None:
    ledger = TrafficLedger()
    for number in range(RECENT + 100):
        ledger.served("mlp", "1", float(number), ok=number >= 100)

    account = ledger.account("mlp", "1")
    window = account.window()

    assert (account.requests, account.errors) == (RECENT + 100, 100)
    assert window.requests == RECENT
    assert window.errors == 0, "the oldest (the errors) are gone from the window"
    assert window.p99_s == float(
        np.percentile(np.arange(100, RECENT + 100), 99, method="inverted_cdf")
    )


# -- rewards ---------------------------------------------------------------------------------

REWARD_SERIES = [
    pytest.param([1.0], True, id="binary-one"),
    pytest.param([0.0, 0.0, 0.0], True, id="binary-all-zero"),
    pytest.param([1.0, 0.0, 1.0, 1.0], True, id="binary-three-of-four"),
    pytest.param([1.0] * 30 + [0.0] * 70, True, id="binary-30-of-100"),
    pytest.param([1.0] * 999 + [0.0], True, id="binary-999-of-1000"),
    pytest.param([0.5, 1.0], False, id="real-two"),
    pytest.param([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], False, id="real-eight"),
    pytest.param(list(np.random.default_rng(3).normal(0.4, 0.2, 500)), False, id="real-500"),
    pytest.param([1.0, 0.0, 0.25], False, id="mostly-binary"),
]


@pytest.mark.parametrize(("values", "binary"), REWARD_SERIES)
def test_reward_mean_and_variance(values: list[float], binary: bool) -> None:
    rewards = Rewards()
    for value in values:
        rewards.add(value)

    assert rewards.count == len(values)
    assert rewards.binary is binary
    assert rewards.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    if len(values) >= 2:
        assert rewards.variance == pytest.approx(statistics.variance(values), rel=1e-9, abs=1e-12)
    else:
        assert rewards.variance == 0.0


@pytest.mark.parametrize(("values", "binary"), REWARD_SERIES)
def test_reward_interval(values: list[float], binary: bool) -> None:
    rewards = Rewards()
    for value in values:
        rewards.add(value)

    interval = rewards.interval()

    assert interval is not None
    if binary:
        successes = round(sum(values))
        wilson = scipy_stats.binomtest(successes, len(values)).proportion_ci(
            confidence_level=0.95, method="wilson"
        )
        assert interval == pytest.approx((wilson.low, wilson.high), rel=1e-9, abs=1e-12)
        assert 0.0 <= interval[0] <= interval[1] <= 1.0
    else:
        sem = statistics.stdev(values) / np.sqrt(len(values))
        low, high = scipy_stats.norm.interval(0.95, loc=statistics.fmean(values), scale=sem)
        assert interval == pytest.approx((low, high), rel=1e-9)
    assert interval[0] - 1e-12 <= rewards.mean <= interval[1] + 1e-12


@pytest.mark.parametrize(
    ("value", "count"),
    [
        pytest.param(value, count, id=f"{count}-times-{value:g}")
        for value in (0.0, 1.0)
        for count in (1, 3, 7, 10, 1000)
    ],
)
def test_an_all_zero_or_all_one_interval_holds_its_mean(value: float, count: int) -> None:
    rewards = Rewards()
    for _ in range(count):
        rewards.add(value)

    interval = rewards.interval()

    # Wilson's bounds for 0 of n start exactly at 0, and for n of n end exactly at 1.
    assert interval is not None
    assert interval[0] <= rewards.mean <= interval[1], interval
    assert interval[0] >= 0.0
    assert interval[1] <= 1.0


def test_no_rewards_no_interval() -> None:
    rewards = Rewards()

    assert (rewards.count, rewards.mean, rewards.variance) == (0, 0.0, 0.0)
    assert rewards.interval() is None
    assert rewards.binary


def test_wilson_is_not_the_normal_interval() -> None:
    rewards = Rewards()
    for value in [1.0] * 10:
        rewards.add(value)

    interval = rewards.interval()

    # The normal interval would be [1, 1]; Wilson's admits that 10 of 10 is not certainty.
    assert interval is not None
    assert interval[0] == pytest.approx(10 / (10 + Z_95**2), rel=1e-12)
    assert interval[1] == pytest.approx(1.0)


# -- served requests, for feedback -----------------------------------------------------------


def test_remember_then_claim() -> None:
    served = ServedRequests(ttl_s=60, max_entries=10)
    served.remember("mlp", "a", "1")
    served.remember("mlp", "b", "2")
    served.remember("other", "a", "7")

    assert served.claim("mlp", "a") == "1"
    assert served.claim("mlp", "b") == "2"
    assert served.claim("other", "a") == "7"


@pytest.mark.parametrize(
    ("endpoint", "request_id", "message"),
    [
        pytest.param(
            "mlp",
            "nope",
            "no recent request 'nope' on endpoint 'mlp' (ids are remembered for 60 s)",
            id="unknown-id",
        ),
        pytest.param(
            "other",
            "a",
            "no recent request 'a' on endpoint 'other' (ids are remembered for 60 s)",
            id="id-of-another-endpoint",
        ),
        pytest.param(
            "mlp",
            "x" * 500,
            f"no recent request '{'x' * 64}…' on endpoint 'mlp' (ids are remembered for 60 s)",
            id="huge-id-shortened",
        ),
    ],
)
def test_claiming_an_unknown_request(endpoint: str, request_id: str, message: str) -> None:
    served = ServedRequests(ttl_s=60, max_entries=10)
    served.remember("mlp", "a", "1")

    with pytest.raises(ModelNotFound) as caught:
        served.claim(endpoint, request_id)

    assert caught.value.message == message


def test_claiming_twice_is_already_recorded() -> None:
    served = ServedRequests(ttl_s=60, max_entries=10)
    served.remember("mlp", "a", "1")
    served.claim("mlp", "a")

    with pytest.raises(AlreadyRecorded) as caught:
        served.claim("mlp", "a")

    assert caught.value.message == "request 'a' already has a reward"


def test_served_again_may_be_rewarded_again() -> None:
    served = ServedRequests(ttl_s=60, max_entries=10)
    served.remember("mlp", "a", "1")
    served.claim("mlp", "a")

    served.remember("mlp", "a", "2")

    assert served.claim("mlp", "a") == "2"


def test_ids_expire_after_the_ttl() -> None:
    ttl_s = 0.05
    served = ServedRequests(ttl_s=ttl_s, max_entries=10)
    served.remember("mlp", "a", "1")
    remembered = time.monotonic()

    deadline = remembered + 5.0
    while time.monotonic() <= remembered + ttl_s:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    with pytest.raises(ModelNotFound) as caught:
        served.claim("mlp", "a")
    assert caught.value.message == (
        "no recent request 'a' on endpoint 'mlp' (ids are remembered for 0.05 s)"
    )


def test_an_id_lives_at_least_its_ttl(clock: Clock) -> None:
    served = ServedRequests(ttl_s=10, max_entries=10)
    served.remember("mlp", "a", "1")
    served.remember("mlp", "b", "2")

    clock.now += 9.999
    assert served.claim("mlp", "a") == "1"
    clock.now += 0.001
    with pytest.raises(ModelNotFound):
        served.claim("mlp", "b")


def test_the_oldest_ids_go_beyond_max_entries() -> None:
    served = ServedRequests(ttl_s=60, max_entries=3)
    for request_id in ("a", "b", "c", "d", "e"):
        served.remember("mlp", request_id, "1")

    for gone in ("a", "b"):
        with pytest.raises(ModelNotFound):
            served.claim("mlp", gone)
    assert [served.claim("mlp", kept) for kept in ("c", "d", "e")] == ["1", "1", "1"]


def test_serving_an_id_again_makes_it_the_newest() -> None:
    served = ServedRequests(ttl_s=60, max_entries=2)
    served.remember("mlp", "a", "1")
    served.remember("mlp", "b", "1")
    served.remember("mlp", "a", "2")
    served.remember("mlp", "c", "1")  # evicts b, the oldest now

    assert served.claim("mlp", "a") == "2"
    with pytest.raises(ModelNotFound):
        served.claim("mlp", "b")
