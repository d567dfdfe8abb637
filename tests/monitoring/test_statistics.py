"""The drift statistics (monitoring/statistics.py) against scipy, on seeded samples of several
sizes and shapes, plus small examples worked out by hand and the edge cases: identical samples,
empty inputs and empty bins (smoothed with SMOOTHING, never inf or nan).

scipy is only the test's reference; the gateway computes these without it. Two deliberate
differences are checked as such: the KS p-value is the asymptotic Kolmogorov one
(``kstwobign.sf(sqrt(n m / (n + m)) D)``), not scipy's ``method="asymp"`` (which uses the
finite-n ``kstwo`` law), and the chi-square is a goodness-of-fit test of the live counts against
the reference's smoothed proportions (``scipy.stats.chisquare`` with those expected counts), not
a contingency test of two samples."""

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from scipy import special, stats
from scipy.spatial import distance

from turnout.monitoring.statistics import (
    SMOOTHING,
    bin_counts,
    chi_square,
    js_distance,
    kolmogorov_survival,
    ks_two_sample,
    proportions,
    psi,
    quantile_edges,
    upper_regularized_gamma,
    wasserstein,
)
from turnout.monitoring.statistics import TestResult as Result  # not a test class

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.int64]
Sampler = Callable[[np.random.Generator, int], Floats]

SAMPLERS: dict[str, tuple[Sampler, Sampler]] = {
    # (reference, live): the live sample is a little different, so D is not always tiny
    "normal": (
        lambda rng, n: rng.normal(0.0, 1.0, n),
        lambda rng, n: rng.normal(0.2, 1.1, n),
    ),
    "exponential": (
        lambda rng, n: rng.exponential(1.0, n),
        lambda rng, n: rng.exponential(1.3, n),
    ),
    "uniform": (
        lambda rng, n: rng.uniform(-1.0, 1.0, n),
        lambda rng, n: rng.uniform(-0.8, 1.2, n),
    ),
    "lognormal": (
        lambda rng, n: rng.lognormal(0.0, 1.0, n),
        lambda rng, n: rng.lognormal(0.1, 0.9, n),
    ),
    # many ties: the empirical distribution functions jump by more than 1/n
    "integers": (
        lambda rng, n: rng.integers(0, 6, n).astype(np.float64),
        lambda rng, n: rng.integers(0, 7, n).astype(np.float64),
    ),
}
SIZES = [(2, 3), (5, 7), (40, 60), (300, 500), (1000, 2000), (2500, 400)]


def samples(kind: str, n: int, m: int, seed: int) -> tuple[Floats, Floats]:
    rng = np.random.default_rng(seed)
    reference, live = SAMPLERS[kind]
    return reference(rng, n), live(rng, m)


def seed_of(kind: str, n: int, m: int) -> int:
    return sorted(SAMPLERS).index(kind) * 1000 + n + 7 * m


# -- Kolmogorov-Smirnov ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
@pytest.mark.parametrize(("n", "m"), SIZES)
def test_ks_statistic_matches_scipy(kind: str, n: int, m: int) -> None:
    reference, live = samples(kind, n, m, seed_of(kind, n, m))
    ours = ks_two_sample(reference, live)
    theirs = stats.ks_2samp(reference, live, method="asymp")
    assert ours.statistic == pytest.approx(float(theirs.statistic), abs=1e-12)


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
@pytest.mark.parametrize(("n", "m"), SIZES)
def test_ks_pvalue_is_the_asymptotic_kolmogorov_one(kind: str, n: int, m: int) -> None:
    reference, live = samples(kind, n, m, seed_of(kind, n, m))
    ours = ks_two_sample(reference, live)
    limit = float(stats.kstwobign.sf(math.sqrt(n * m / (n + m)) * ours.statistic))
    assert ours.p_value == pytest.approx(limit, rel=1e-9, abs=1e-14)
    assert 0.0 <= ours.p_value <= 1.0


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
@pytest.mark.parametrize(("n", "m"), [(300, 500), (1000, 2000), (2500, 400)])
def test_ks_pvalue_is_close_to_scipys_finite_n_one_for_large_samples(
    kind: str, n: int, m: int
) -> None:
    """scipy's ``asymp`` uses kstwo at round(n m / (n + m)); the limit law is near it once the
    effective size is in the hundreds."""
    reference, live = samples(kind, n, m, seed_of(kind, n, m))
    ours = ks_two_sample(reference, live)
    theirs = float(stats.ks_2samp(reference, live, method="asymp").pvalue)
    assert ours.p_value == pytest.approx(theirs, abs=0.03)


def test_ks_worked_example() -> None:
    # a = {1, 2, 3}, b = {2.5, 3.5}: from 2 to 2.5 the ECDF of a is 2/3 and of b is 0, and
    # nowhere further apart, so D = 2/3; the p-value is that of sqrt(3 * 2 / 5) * 2/3 under the
    # Kolmogorov law.
    result = ks_two_sample(np.array([3.0, 1.0, 2.0]), np.array([3.5, 2.5]))
    assert result.statistic == pytest.approx(2 / 3)
    assert result.p_value == pytest.approx(
        float(stats.kstwobign.sf(math.sqrt(6 / 5) * 2 / 3)), rel=1e-12
    )


def test_ks_disjoint_samples_have_statistic_one() -> None:
    result = ks_two_sample(np.arange(100.0), np.arange(100.0) + 1000)
    assert result.statistic == 1.0
    assert result.p_value < 1e-40


@pytest.mark.parametrize("size", [1, 10, 1000])
def test_ks_identical_samples(size: int) -> None:
    values = np.random.default_rng(size).normal(size=size)
    assert ks_two_sample(values, values.copy()) == Result(0.0, 1.0)


@pytest.mark.parametrize(
    ("reference", "live"),
    [(np.array([]), np.array([1.0, 2.0])), (np.array([1.0]), np.array([])), (np.array([]),) * 2],
)
def test_ks_with_an_empty_sample_is_no_evidence(reference: Floats, live: Floats) -> None:
    assert ks_two_sample(reference, live) == Result(0.0, 1.0)


@pytest.mark.parametrize("x", [*np.linspace(0.05, 3.0, 60).tolist(), 1.17999, 1.18, 1.18001, 5.0])
def test_kolmogorov_survival_matches_kstwobign(x: float) -> None:
    # both branches (the theta series below 1.18, the alternating series above) and the seam
    assert kolmogorov_survival(x) == pytest.approx(
        float(stats.kstwobign.sf(x)), rel=1e-9, abs=1e-14
    )


@pytest.mark.parametrize("x", [0.0, -1.0])
def test_kolmogorov_survival_of_non_positive_is_one(x: float) -> None:
    assert kolmogorov_survival(x) == 1.0


# -- Wasserstein-1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
@pytest.mark.parametrize(("n", "m"), SIZES)
def test_wasserstein_matches_scipy(kind: str, n: int, m: int) -> None:
    reference, live = samples(kind, n, m, seed_of(kind, n, m) + 1)
    expected = float(stats.wasserstein_distance(reference, live))
    assert wasserstein(reference, live) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_wasserstein_worked_examples() -> None:
    # shifting a sample by c moves every unit of mass by c
    values = np.array([0.0, 1.0, 5.0])
    assert wasserstein(values, values + 2.5) == pytest.approx(2.5)
    # {0, 1} against {0, 3}: half the mass moves from 1 to 3
    assert wasserstein(np.array([0.0, 1.0]), np.array([0.0, 3.0])) == pytest.approx(1.0)
    # a point mass at 0 against {0, 0, 3, 3}: half the mass moves 3
    assert wasserstein(np.array([0.0]), np.array([0.0, 0.0, 3.0, 3.0])) == pytest.approx(1.5)


def test_wasserstein_edge_cases() -> None:
    values = np.random.default_rng(3).normal(size=50)
    assert wasserstein(values, values[::-1].copy()) == 0.0
    assert wasserstein(np.array([]), values) == 0.0
    assert wasserstein(values, np.array([])) == 0.0


# -- Jensen-Shannon distance -----------------------------------------------------------------


@pytest.mark.parametrize("bins", [2, 3, 10, 50])
@pytest.mark.parametrize("seed", range(4))
def test_js_distance_matches_scipy(bins: int, seed: int) -> None:
    rng = np.random.default_rng(100 * bins + seed)
    # small counts, so some bins are empty on one side or the other
    reference = rng.integers(0, 5, bins).astype(np.int64)
    live = rng.integers(0, 5, bins).astype(np.int64)
    reference[0] += 1  # neither side all zero (scipy gives nan there)
    live[-1] += 1
    expected = float(distance.jensenshannon(reference, live, base=2))
    assert js_distance(reference, live) == pytest.approx(expected, abs=1e-12)


def test_js_distance_worked_example() -> None:
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)  # 0.2075...
    kl_q = 1.0 * math.log2(1.0 / 0.75)  # 0.4150...
    expected = math.sqrt(0.5 * kl_p + 0.5 * kl_q)
    assert expected == pytest.approx(0.557923, abs=1e-6)
    assert js_distance(np.array([5, 5]), np.array([8, 0])) == pytest.approx(expected, rel=1e-12)


def test_js_distance_bounds() -> None:
    assert js_distance(np.array([3, 0]), np.array([0, 7])) == pytest.approx(1.0)  # disjoint
    assert js_distance(np.array([2, 4, 6]), np.array([1, 2, 3])) == pytest.approx(0.0, abs=1e-7)
    # an empty side: no distribution to compare, so not a number (recorded as null)
    for value in (
        js_distance(np.array([0, 0, 0]), np.array([1, 2, 3])),
        js_distance(np.array([1, 2, 3]), np.array([0, 0, 0])),
        js_distance(np.array([0, 0]), np.array([0, 0])),
    ):
        assert math.isnan(value)


# -- population stability index --------------------------------------------------------------


def test_psi_worked_example() -> None:
    # reference shares 1/4 each, live shares 0.1, 0.2, 0.3, 0.4:
    # PSI = sum((a - e) * ln(a / e))
    #     = (-0.15) ln 0.4 + (-0.05) ln 0.8 + 0.05 ln 1.2 + 0.15 ln 1.6
    #     = 0.137444 + 0.011157 + 0.009116 + 0.070501 = 0.228217
    expected = (
        (0.1 - 0.25) * math.log(0.1 / 0.25)
        + (0.2 - 0.25) * math.log(0.2 / 0.25)
        + (0.3 - 0.25) * math.log(0.3 / 0.25)
        + (0.4 - 0.25) * math.log(0.4 / 0.25)
    )
    assert expected == pytest.approx(0.228217, abs=1e-6)
    assert psi(np.array([25, 25, 25, 25]), np.array([10, 20, 30, 40])) == pytest.approx(
        expected, rel=1e-12
    )


def test_psi_is_symmetric_and_scale_free() -> None:
    reference, live = np.array([30, 50, 20]), np.array([10, 60, 30])
    assert psi(reference, live) == pytest.approx(psi(live, reference), rel=1e-12)
    assert psi(reference * 7, live * 3) == pytest.approx(psi(reference, live), rel=1e-12)


def test_psi_identical_is_zero() -> None:
    counts = np.array([10, 0, 5, 85])
    assert psi(counts, counts.copy()) == 0.0
    assert psi(counts, counts * 4) == pytest.approx(0.0, abs=1e-15)


def test_psi_empty_bins_use_the_smoothing_share() -> None:
    # reference (50, 50, 0), live (0, 50, 50): each empty bin gets SMOOTHING, then all renormalise
    expected_shares = np.array([0.5, 0.5, SMOOTHING]) / (1 + SMOOTHING)
    actual_shares = np.array([SMOOTHING, 0.5, 0.5]) / (1 + SMOOTHING)
    expected = float(
        np.sum((actual_shares - expected_shares) * np.log(actual_shares / expected_shares))
    )
    # = 2 * (0.5 - 1e-4) / (1 + 1e-4) * ln(5000) = 8.5160...
    assert expected == pytest.approx(
        2 * (0.5 - SMOOTHING) / (1 + SMOOTHING) * math.log(0.5 / SMOOTHING)
    )
    value = psi(np.array([50, 50, 0]), np.array([0, 50, 50]))
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-12)


def test_psi_with_no_live_values_is_finite() -> None:
    # no counts at all: the shares are uniform, so a uniform reference shows no change
    assert psi(np.array([5, 5, 5, 5]), np.array([0, 0, 0, 0])) == pytest.approx(0.0, abs=1e-15)
    value = psi(np.array([97, 1, 1, 1]), np.array([0, 0, 0, 0]))
    assert math.isfinite(value)
    assert value > 0.25


def test_proportions() -> None:
    shares = proportions(np.array([0, 3, 1]))
    assert shares.sum() == pytest.approx(1.0)
    assert shares == pytest.approx(np.array([SMOOTHING, 0.75, 0.25]) / (1 + SMOOTHING))
    assert proportions(np.array([0, 0])) == pytest.approx([0.5, 0.5])


# -- bins ------------------------------------------------------------------------------------


def test_quantile_edges_split_evenly() -> None:
    edges = quantile_edges(np.arange(1000.0), bins=10)
    assert len(edges) == 9
    assert edges == pytest.approx(np.quantile(np.arange(1000.0), np.arange(1, 10) / 10))
    counts = bin_counts(np.arange(1000.0), edges)
    assert counts.tolist() == [100] * 10


def test_quantile_edges_collapse_on_repeated_values() -> None:
    assert quantile_edges(np.full(100, 3.0)).tolist() == [3.0]
    assert quantile_edges(np.array([1.0] * 50 + [2.0] * 50)).tolist() == [1.0, 1.5, 2.0]


def test_bin_counts_put_an_edge_value_in_the_upper_bin() -> None:
    counts = bin_counts(np.array([-5.0, 0.0, 0.5, 1.0, 9.0]), np.array([0.0, 1.0]))
    assert counts.tolist() == [1, 2, 2]


# -- chi-square ------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [2, 3, 5, 20, 51])
@pytest.mark.parametrize("seed", range(3))
def test_chi_square_matches_scipy_goodness_of_fit(bins: int, seed: int) -> None:
    rng = np.random.default_rng(10 * bins + seed)
    reference = rng.integers(20, 200, bins).astype(np.int64)  # no empty bin: no smoothing
    tilt = 1.0 + 0.3 * seed * rng.random(bins)
    live = rng.multinomial(1000, reference * tilt / np.sum(reference * tilt)).astype(np.int64)
    expected = reference / reference.sum() * live.sum()
    theirs = stats.chisquare(live, f_exp=expected)
    ours = chi_square(reference, live)
    assert ours.statistic == pytest.approx(float(theirs.statistic), rel=1e-10)
    assert ours.p_value == pytest.approx(float(theirs.pvalue), rel=1e-8, abs=1e-300)


def test_chi_square_smooths_an_empty_reference_bin() -> None:
    reference, live = np.array([60, 40, 0]), np.array([50, 45, 5])
    shares = np.array([0.6, 0.4, SMOOTHING]) / (1 + SMOOTHING)
    theirs = stats.chisquare(live, f_exp=shares * 100)
    ours = chi_square(reference, live)
    assert math.isfinite(ours.statistic)
    assert ours.statistic == pytest.approx(float(theirs.statistic), rel=1e-10)
    assert ours.p_value == pytest.approx(float(theirs.pvalue), rel=1e-8, abs=1e-300)
    assert ours.statistic > 2000  # 5 values where 0.01 were expected


def test_chi_square_worked_example() -> None:
    # reference shares (1/2, 1/2); live (30, 70): expected 50 each,
    # chi2 = 20^2 / 50 + 20^2 / 50 = 16, one degree of freedom: p = erfc(sqrt(16 / 2))
    result = chi_square(np.array([10, 10]), np.array([30, 70]))
    assert result.statistic == pytest.approx(16.0)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(8.0)), rel=1e-10)


def test_chi_square_matching_proportions() -> None:
    result = chi_square(np.array([1, 2, 3]), np.array([10, 20, 30]))
    assert result.statistic == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("reference", "live"),
    [(np.array([3, 4]), np.array([0, 0])), (np.array([3]), np.array([9]))],
)
def test_chi_square_without_evidence(reference: Counts, live: Counts) -> None:
    assert chi_square(reference, live) == Result(0.0, 1.0)


# -- upper regularized gamma -----------------------------------------------------------------

A_VALUES = [0.5, 1.0, 1.5, 2.0, 3.5, 4.5, 10.0, 24.5, 49.5, 100.0, 500.0]
X_VALUES = [1e-6, 1e-3, 0.1, 0.5, 1.0, 2.0, 4.5, 5.5, 10.0, 30.0, 60.0, 100.0, 200.0, 480.0, 700.0]


@pytest.mark.parametrize("a", A_VALUES)
@pytest.mark.parametrize("x", X_VALUES)
def test_upper_regularized_gamma_matches_scipy(a: float, x: float) -> None:
    # both the series (x < a + 1) and the continued fraction (x >= a + 1)
    expected = float(special.gammaincc(a, x))
    assert upper_regularized_gamma(a, x) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("a", [0.5, 2.0, 10.0])
def test_upper_regularized_gamma_at_zero_is_one(a: float) -> None:
    assert upper_regularized_gamma(a, 0.0) == 1.0
    assert upper_regularized_gamma(a, -3.0) == 1.0


def test_upper_regularized_gamma_worked_examples() -> None:
    # Q(1, x) = exp(-x); Q(1/2, x) = erfc(sqrt(x))
    for x in (0.3, 1.0, 2.0, 7.0):
        assert upper_regularized_gamma(1.0, x) == pytest.approx(math.exp(-x), rel=1e-12)
        assert upper_regularized_gamma(0.5, x) == pytest.approx(math.erfc(math.sqrt(x)), rel=1e-10)


# -- NaN -------------------------------------------------------------------------------------


def test_bin_counts_put_nan_past_the_last_edge() -> None:
    """The statistics take finite values (the profile drops the rest and reports their rate);
    a NaN given anyway sorts after every edge, into the last bin, and is not lost or an error."""
    counts = bin_counts(np.array([0.5, np.nan, 2.5]), np.array([1.0, 2.0]))
    assert counts.tolist() == [1, 0, 2]
