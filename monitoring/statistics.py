"""The drift statistics, written out so the gateway needs no statistics library at run time.

Numeric features: the population stability index on the reference's quantile bins, the
two-sample Kolmogorov-Smirnov statistic with its asymptotic p-value, the Jensen-Shannon distance
(base 2) on the same bins, and the Wasserstein-1 distance. Categorical features: Pearson's
chi-square against the reference's proportions, and the population stability index over the
categories.
"""

import math
from dataclasses import dataclass

import numpy as np

SMOOTHING = 1e-4  # the share given to an empty bin, so logarithms stay finite


@dataclass(frozen=True, slots=True)
class TestResult:
    """A statistic and its p-value."""

    statistic: float
    p_value: float


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """The interior bin edges that split ``reference`` into ``bins`` equally populated bins
    (fewer when values repeat)."""
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(edges)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many values fall in each bin: below the first edge, between edges, from the last."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def proportions(counts: np.ndarray) -> np.ndarray:
    """Counts as shares, every share at least SMOOTHING (then renormalised)."""
    total = counts.sum()
    shares = counts / total if total else np.full(len(counts), 1 / len(counts))
    shares = np.maximum(shares, SMOOTHING)
    return np.asarray(shares / shares.sum())


def psi(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """The population stability index: sum of (live - reference) * ln(live / reference)."""
    expected, actual = proportions(reference_counts), proportions(live_counts)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def js_distance(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """The Jensen-Shannon distance in bits (0 for equal distributions, 1 for disjoint; NaN
    when either side has no counts)."""
    if not reference_counts.sum() or not live_counts.sum():
        return math.nan
    p = reference_counts / reference_counts.sum()
    q = live_counts / live_counts.sum()
    middle = (p + q) / 2
    divergence = 0.5 * _kl_bits(p, middle) + 0.5 * _kl_bits(q, middle)
    return math.sqrt(max(divergence, 0.0))


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))


def ks_two_sample(reference: np.ndarray, live: np.ndarray) -> TestResult:
    """The two-sample Kolmogorov-Smirnov test (two-sided, asymptotic p-value)."""
    a, b = np.sort(reference), np.sort(live)
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return TestResult(0.0, 1.0)
    points = np.concatenate([a, b])
    difference = (
        np.searchsorted(a, points, side="right") / n - np.searchsorted(b, points, side="right") / m
    )
    statistic = float(np.max(np.abs(difference)))
    return TestResult(statistic, kolmogorov_survival(math.sqrt(n * m / (n + m)) * statistic))


def kolmogorov_survival(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the limit law of sqrt(n) * D)."""
    if x <= 0:
        return 1.0
    if x < 1.18:
        # The series in exp(-(2k-1)^2 pi^2 / (8 x^2)) converges fast for small x.
        factor = math.sqrt(2 * math.pi) / x
        cdf = factor * sum(
            math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * x * x)) for k in range(1, 7)
        )
        return 1.0 - cdf
    return float(2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101)))


def wasserstein(reference: np.ndarray, live: np.ndarray) -> float:
    """The Wasserstein-1 (earth mover's) distance between two samples: the area between their
    empirical distribution functions."""
    a, b = np.sort(reference), np.sort(live)
    if len(a) == 0 or len(b) == 0:
        return 0.0
    points = np.sort(np.concatenate([a, b]))
    widths = np.diff(points)
    cdf_a = np.searchsorted(a, points[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, points[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def chi_square(reference_counts: np.ndarray, live_counts: np.ndarray) -> TestResult:
    """Pearson's chi-square of the live counts against the reference's (smoothed) proportions."""
    total = live_counts.sum()
    if total == 0 or len(live_counts) < 2:
        return TestResult(0.0, 1.0)
    expected = proportions(reference_counts) * total
    statistic = float(np.sum((live_counts - expected) ** 2 / expected))
    return TestResult(statistic, upper_regularized_gamma((len(live_counts) - 1) / 2, statistic / 2))


def upper_regularized_gamma(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a), by its series below a + 1 and its continued fraction
    above (Numerical Recipes' gammq)."""
    if x <= 0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        denominator = a
        for _ in range(1000):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    fraction = d
    for i in range(1, 1000):
        numerator = -i * (i - a)
        b += 2
        d = numerator * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + numerator / c
        c = c if abs(c) > tiny else tiny
        fraction *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return math.exp(log_front) * fraction
