"""The significance tests of the A/B readout (router/stats.py) against scipy, the sample-size
helpers, and the readout's verdicts (router/report.py)."""

import math
from typing import Any

import numpy as np
import pytest
from scipy import special
from scipy import stats as scipy_stats

from turnout.router.ledger import VersionTraffic
from turnout.router.report import readout
from turnout.router.stats import (
    Z_80_POWER,
    Z_95,
    normal_cdf,
    regularized_incomplete_beta,
    samples_for_means,
    samples_for_proportions,
    student_t_two_sided,
    two_proportions,
    welch,
)

RTOL = 1e-9


@pytest.mark.parametrize(
    ("successes_a", "total_a", "successes_b", "total_b"),
    [
        pytest.param(30, 100, 45, 100, id="30-vs-45-of-100"),
        pytest.param(45, 100, 30, 100, id="45-vs-30-of-100"),
        pytest.param(1, 10, 9, 10, id="1-vs-9-of-10"),
        pytest.param(500, 1000, 510, 1000, id="close-rates"),
        pytest.param(0, 50, 5, 50, id="a-zero"),
        pytest.param(120, 400, 80, 300, id="unequal-sizes"),
        pytest.param(7, 7, 0, 7, id="all-vs-none"),
        pytest.param(2, 3, 1, 3, id="tiny"),
        pytest.param(4900, 10000, 5000, 10000, id="large"),
    ],
)
def test_two_proportions_against_scipy(
    successes_a: int, total_a: int, successes_b: int, total_b: int
) -> None:
    result = two_proportions(successes_a, total_a, successes_b, total_b)

    # The pooled z-test is the chi-square test of the 2x2 table without continuity correction.
    table = [[successes_a, total_a - successes_a], [successes_b, total_b - successes_b]]
    chi2, p_value, _, _ = scipy_stats.chi2_contingency(table, correction=False)
    assert result.p_value == pytest.approx(p_value, rel=RTOL)
    assert result.statistic**2 == pytest.approx(chi2, rel=RTOL)
    assert math.copysign(1, result.statistic) == math.copysign(
        1, successes_a / total_a - successes_b / total_b
    )


@pytest.mark.parametrize(
    ("successes_a", "total_a", "successes_b", "total_b"),
    [
        pytest.param(0, 0, 5, 10, id="a-empty"),
        pytest.param(5, 10, 0, 0, id="b-empty"),
        pytest.param(0, 10, 0, 20, id="no-successes"),
        pytest.param(10, 10, 20, 20, id="all-successes"),
    ],
)
def test_two_proportions_with_nothing_to_compare(
    successes_a: int, total_a: int, successes_b: int, total_b: int
) -> None:
    result = two_proportions(successes_a, total_a, successes_b, total_b)

    assert (result.statistic, result.p_value) == (0.0, 1.0)


def test_two_proportions_far_tail() -> None:
    # 2 (1 - Phi(|z|)) loses relative precision far in the tail; it stays right absolutely.
    result = two_proportions(100, 1000, 300, 1000)

    _, p_value, _, _ = scipy_stats.chi2_contingency([[100, 900], [300, 700]], correction=False)
    assert result.p_value == pytest.approx(p_value, abs=1e-15)


WELCH = [
    pytest.param(1.0, 1.0, 10, 1.5, 2.0, 12, id="small"),
    pytest.param(0.3, 0.21, 100, 0.35, 0.23, 80, id="rates-as-means"),
    pytest.param(5.0, 0.01, 3, 5.1, 4.0, 50, id="very-unequal-variances"),
    pytest.param(10.0, 3.0, 1000, 9.9, 3.5, 900, id="large"),
    pytest.param(-2.0, 0.5, 2, 3.0, 0.5, 2, id="two-each-far-apart"),
    pytest.param(0.7, 0.25, 40, 0.3, 0.25, 40, id="equal-variances"),
]


@pytest.mark.parametrize(
    ("mean_a", "variance_a", "count_a", "mean_b", "variance_b", "count_b"), WELCH
)
def test_welch_against_scipy(
    mean_a: float,
    variance_a: float,
    count_a: int,
    mean_b: float,
    variance_b: float,
    count_b: int,
) -> None:
    result = welch(mean_a, variance_a, count_a, mean_b, variance_b, count_b)

    expected = scipy_stats.ttest_ind_from_stats(
        mean_a,
        math.sqrt(variance_a),
        count_a,
        mean_b,
        math.sqrt(variance_b),
        count_b,
        equal_var=False,
    )
    assert result.statistic == pytest.approx(expected.statistic, rel=RTOL)
    assert result.p_value == pytest.approx(expected.pvalue, rel=RTOL)


def test_welch_on_raw_samples_against_scipy() -> None:
    generator = np.random.default_rng(12)
    a = generator.normal(0.50, 0.3, 60)
    b = generator.normal(0.62, 0.5, 45)

    result = welch(
        float(a.mean()), float(a.var(ddof=1)), a.size, float(b.mean()), float(b.var(ddof=1)), b.size
    )

    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert result.statistic == pytest.approx(expected.statistic, rel=RTOL)
    assert result.p_value == pytest.approx(expected.pvalue, rel=RTOL)


@pytest.mark.parametrize(
    ("mean_a", "variance_a", "count_a", "mean_b", "variance_b", "count_b"),
    [
        pytest.param(1.0, 1.0, 1, 2.0, 1.0, 10, id="a-has-one"),
        pytest.param(1.0, 1.0, 10, 2.0, 1.0, 1, id="b-has-one"),
        pytest.param(1.0, 0.0, 10, 2.0, 0.0, 10, id="no-spread"),
    ],
)
def test_welch_with_nothing_to_compare(
    mean_a: float,
    variance_a: float,
    count_a: int,
    mean_b: float,
    variance_b: float,
    count_b: int,
) -> None:
    result = welch(mean_a, variance_a, count_a, mean_b, variance_b, count_b)

    assert (result.statistic, result.p_value) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("t", "freedom"),
    [
        pytest.param(0.0, 7.0, id="zero"),
        pytest.param(0.1, 1.0, id="cauchy-small"),
        pytest.param(1.0, 1.0, id="cauchy-one"),
        pytest.param(2.0, 5.0, id="t2-df5"),
        pytest.param(10.0, 3.0, id="t10-df3"),
        pytest.param(3.0, 30.0, id="t3-df30"),
        pytest.param(0.5, 2.5, id="fractional-freedom"),
        pytest.param(50.0, 10.0, id="far-tail"),
        pytest.param(4.0, 100.0, id="df100"),
        pytest.param(1.96, 1e4, id="nearly-normal"),
        pytest.param(2.5, 123.456, id="welch-like-freedom"),
    ],
)
def test_student_t_two_sided_against_scipy(t: float, freedom: float) -> None:
    assert student_t_two_sided(t, freedom) == pytest.approx(
        2 * scipy_stats.t.sf(t, freedom), rel=RTOL
    )


@pytest.mark.parametrize(
    ("a", "b", "x"),
    [
        pytest.param(0.5, 0.5, 0.3, id="arcsine"),
        pytest.param(2.0, 3.0, 0.4, id="polynomial"),
        pytest.param(1.0, 1.0, 0.7, id="uniform"),
        pytest.param(10.0, 0.5, 0.9, id="t-like"),
        pytest.param(0.5, 10.0, 0.01, id="small-x"),
        pytest.param(50.0, 50.0, 0.5, id="symmetric-centre"),
        pytest.param(200.0, 0.5, 0.99, id="large-a"),
        pytest.param(5.0, 5.0, 0.001, id="tiny-result"),
        pytest.param(3.0, 2.0, 0.999, id="near-one"),
        pytest.param(0.5, 0.5, 0.999999, id="edge"),
        pytest.param(1000.0, 1000.0, 0.48, id="large-both"),
        pytest.param(2.5, 7.5, 0.25, id="fractional"),
    ],
)
def test_regularized_incomplete_beta_against_scipy(a: float, b: float, x: float) -> None:
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=RTOL)


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        pytest.param(0.0, 0.0, id="zero"),
        pytest.param(-1.0, 0.0, id="below"),
        pytest.param(1.0, 1.0, id="one"),
        pytest.param(2.0, 1.0, id="above"),
    ],
)
def test_regularized_incomplete_beta_at_the_ends(x: float, expected: float) -> None:
    assert regularized_incomplete_beta(2.0, 3.0, x) == expected


@pytest.mark.parametrize("x", [-5.0, -1.96, -0.3, 0.0, 0.7, 1.96, 4.0])
def test_normal_cdf_against_scipy(x: float) -> None:
    assert normal_cdf(x) == pytest.approx(scipy_stats.norm.cdf(x), rel=1e-12)


def test_critical_values() -> None:
    assert pytest.approx(scipy_stats.norm.ppf(0.975), rel=1e-12) == Z_95
    assert pytest.approx(scipy_stats.norm.ppf(0.80), rel=1e-12) == Z_80_POWER


@pytest.mark.parametrize(
    ("rate_a", "rate_b", "expected"),
    [
        pytest.param(0.1, 0.2, 199, id="10-vs-20"),
        pytest.param(0.2, 0.1, 199, id="symmetric"),
        pytest.param(0.5, 0.6, 388, id="50-vs-60"),
        pytest.param(0.3, 0.7, 24, id="far-apart"),
        pytest.param(0.01, 0.02, 2319, id="rare"),
        pytest.param(0.4, 0.4, None, id="equal"),
    ],
)
def test_samples_for_proportions(rate_a: float, rate_b: float, expected: int | None) -> None:
    needed = samples_for_proportions(rate_a, rate_b)

    assert needed == expected
    if expected is not None:
        # Pooled variance under the null, separate variances under the alternative.
        pooled = (rate_a + rate_b) / 2
        spread = scipy_stats.norm.ppf(0.975) * math.sqrt(
            2 * pooled * (1 - pooled)
        ) + scipy_stats.norm.ppf(0.8) * math.sqrt(rate_a * (1 - rate_a) + rate_b * (1 - rate_b))
        assert needed == math.ceil(spread**2 / (rate_a - rate_b) ** 2)


@pytest.mark.parametrize(
    ("mean_a", "mean_b", "variance", "expected"),
    [
        pytest.param(1.0, 1.5, 1.0, 63, id="half-sd"),
        pytest.param(1.5, 1.0, 1.0, 63, id="symmetric"),
        pytest.param(0.0, 1.0, 1.0, 16, id="one-sd"),
        pytest.param(0.30, 0.32, 0.04, 1570, id="small-difference"),
        pytest.param(2.0, 2.0, 1.0, None, id="equal"),
    ],
)
def test_samples_for_means(
    mean_a: float, mean_b: float, variance: float, expected: int | None
) -> None:
    assert samples_for_means(mean_a, mean_b, variance) == expected


def test_sample_size_gives_the_promised_power() -> None:
    # With the sizes the helper asks for, the z-test sees the difference about 80 % of the time.
    rate_a, rate_b = 0.3, 0.4
    needed = samples_for_proportions(rate_a, rate_b)
    assert needed is not None

    spread = math.sqrt((rate_a * (1 - rate_a) + rate_b * (1 - rate_b)) / needed)
    power = scipy_stats.norm.sf(Z_95 - abs(rate_a - rate_b) / spread)
    assert 0.80 <= power < 0.81


# -- the readout -----------------------------------------------------------------------------


def account(requests: int = 0, errors: int = 0, rewards: tuple[float, ...] = ()) -> VersionTraffic:
    traffic = VersionTraffic(requests=requests, errors=errors)
    for value in rewards:
        traffic.rewards.add(value)
    return traffic


def successes(count: int, of: int) -> tuple[float, ...]:
    return (1.0,) * count + (0.0,) * (of - count)


READOUTS = [
    pytest.param(
        account(1000, 0, successes(300, 1000)),
        account(1000, 100, successes(700, 1000)),
        "1 is better than 2 at 95%",
        "2 is better than 1 at 95%",
        "two-proportion z-test",
        id="clear-winners",
    ),
    pytest.param(
        account(1000, 50, successes(700, 1000)),
        account(1000, 0, successes(300, 1000)),
        "2 is better than 1 at 95%",
        "1 is better than 2 at 95%",
        "two-proportion z-test",
        id="the-other-way",
    ),
    pytest.param(
        account(20, 1, successes(10, 20)),
        account(20, 2, successes(12, 20)),
        "not enough data yet (need about 415 more per version)",
        "not enough data yet (need about 368 more per version)",
        "two-proportion z-test",
        id="too-little-data",
    ),
    pytest.param(
        account(100, 5, successes(50, 100)),
        account(100, 5, successes(50, 100)),
        "no difference detected",
        "no difference detected",
        "two-proportion z-test",
        id="identical",
    ),
    pytest.param(
        account(50, 0, (0.2, 0.3) * 25),
        account(50, 0, (0.8, 0.9) * 25),
        "no difference detected",
        "2 is better than 1 at 95%",
        "Welch's t-test",
        id="real-rewards",
    ),
    pytest.param(
        account(30, 0, (0.2, 0.6, 1.0) * 10),
        account(30, 0, (0.3, 0.7, 1.1) * 10),
        "no difference detected",
        "not enough data yet (need about 144 more per version)",
        "Welch's t-test",
        id="real-rewards-too-little",
    ),
    pytest.param(
        account(10, 0, successes(5, 10)),
        account(10, 0, (0.5,) * 10),
        "no difference detected",
        "no difference detected",
        "Welch's t-test",
        id="binary-against-real-is-welch",
    ),
    pytest.param(
        account(0),
        account(3),
        "not enough data yet (no requests for one version)",
        "not enough data yet (no rewards for one version)",
        None,
        id="no-requests",
    ),
    pytest.param(
        account(100, 1),
        account(100, 2, successes(5, 10)),
        "not enough data yet (need about 2219 more per version)",
        "not enough data yet (no rewards for one version)",
        None,
        id="no-rewards-for-one",
    ),
]


@pytest.mark.parametrize(
    ("first", "second", "error_verdict", "reward_verdict", "reward_test"), READOUTS
)
def test_readout_verdicts(
    first: VersionTraffic,
    second: VersionTraffic,
    error_verdict: str,
    reward_verdict: str,
    reward_test: str | None,
) -> None:
    report = readout("mlp", {"1": first, "2": second})

    (comparison,) = report["comparisons"]
    assert comparison["versions"] == ["1", "2"]
    assert comparison["error_rate"]["verdict"] == error_verdict
    assert comparison["reward"]["verdict"] == reward_verdict
    assert comparison["reward"]["test"] == reward_test


def test_readout_of_each_version() -> None:
    first = account(4, 1, successes(3, 4))
    for seconds in (0.001, 0.002, 0.003, 0.010):
        first.recent.append((1.0, seconds, True))

    report = readout("mlp", {"10": account(), "1": first})

    assert report["endpoint"] == "mlp"
    assert list(report["versions"]) == ["1", "10"], "lowest version first, numerically"
    one = report["versions"]["1"]
    assert one["requests"] == 4
    assert one["errors"] == 1
    assert one["error_rate"] == 0.25
    assert one["latency_ms"] == {"p50": 2.0, "p90": 10.0, "p99": 10.0}
    assert one["rewards"]["count"] == 4
    assert one["rewards"]["mean"] == 0.75
    assert one["rewards"]["interval_95"] == pytest.approx(list(first.rewards.interval() or ()))
    assert report["versions"]["10"] == {
        "requests": 0,
        "errors": 0,
        "error_rate": 0.0,
        "latency_ms": {"p50": None, "p90": None, "p99": None},
        "rewards": {"count": 0, "mean": None, "interval_95": None},
    }
    assert [c["versions"] for c in report["comparisons"]] == [["1", "10"]]


def test_readout_compares_every_pair() -> None:
    report = readout("mlp", {"3": account(10), "1": account(10), "2": account(10)})

    assert [c["versions"] for c in report["comparisons"]] == [["1", "2"], ["1", "3"], ["2", "3"]]


def test_readout_statistics_match_the_tests() -> None:
    first, second = account(400, 4, successes(120, 400)), account(300, 9, successes(80, 300))

    comparison: dict[str, Any] = readout("mlp", {"1": first, "2": second})["comparisons"][0]

    errors = two_proportions(4, 400, 9, 300)
    rewards = two_proportions(120, 400, 80, 300)
    assert comparison["error_rate"]["statistic"] == errors.statistic
    assert comparison["error_rate"]["p_value"] == errors.p_value
    assert comparison["reward"]["statistic"] == rewards.statistic
    assert comparison["reward"]["p_value"] == rewards.p_value


def test_readout_with_no_versions() -> None:
    assert readout("mlp", {}) == {"endpoint": "mlp", "versions": {}, "comparisons": []}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(account(1, 0, (1.0,)), account(1, 0, (0.0,)), id="one-binary-reward-each"),
        pytest.param(account(1, 0, (0.2,)), account(1, 0, (0.8,)), id="one-real-reward-each"),
    ],
)
def test_one_reward_each_is_not_enough_to_call_it(
    first: VersionTraffic, second: VersionTraffic
) -> None:
    # Neither test is significant here, and a verdict of "no difference" after a reward or
    # three per version would be unfounded: the readout must say it needs more data.
    comparison = readout("mlp", {"1": first, "2": second})["comparisons"][0]

    assert comparison["reward"]["p_value"] >= 0.05
    assert comparison["reward"]["verdict"].startswith("not enough data yet"), comparison


def test_means_equal_but_for_rounding_are_no_difference() -> None:
    # Both average 0.6; summed in another order the means differ in the last bit, which must
    # not turn into a demand for some 10**31 more rewards.
    first = account(30, 0, (0.5, 0.6, 0.7) * 10)
    second = account(30, 0, (0.45, 0.65, 0.7) * 10)

    comparison = readout("mlp", {"1": first, "2": second})["comparisons"][0]

    assert comparison["reward"]["verdict"] == "no difference detected", comparison
