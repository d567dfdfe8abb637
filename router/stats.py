"""The significance tests of the A/B readout, written out so the gateway needs no statistics
library: a two-proportion z-test for rates (0/1 rewards, error rates) and Welch's t-test for
means of real rewards, with the sample size still needed when a difference is not yet clear."""

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # two-sided 5 %
Z_80_POWER = 0.8416212335729143


@dataclass(frozen=True, slots=True)
class TestResult:
    """A two-sided test of "the two groups differ": the statistic and its p-value."""

    statistic: float
    p_value: float


def normal_cdf(x: float) -> float:
    """The standard normal distribution function."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def two_proportions(successes_a: int, total_a: int, successes_b: int, total_b: int) -> TestResult:
    """Pooled two-proportion z-test; p-value 1 when there is nothing to compare."""
    if total_a == 0 or total_b == 0:
        return TestResult(0.0, 1.0)
    pooled = (successes_a + successes_b) / (total_a + total_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / total_a + 1 / total_b))
    if spread == 0:
        return TestResult(0.0, 1.0)
    z = (successes_a / total_a - successes_b / total_b) / spread
    return TestResult(z, 2 * (1 - normal_cdf(abs(z))))


def welch(
    mean_a: float, variance_a: float, count_a: int, mean_b: float, variance_b: float, count_b: int
) -> TestResult:
    """Welch's unequal-variances t-test on two sample means (sample variances, n - 1)."""
    if count_a < 2 or count_b < 2:
        return TestResult(0.0, 1.0)
    error_a, error_b = variance_a / count_a, variance_b / count_b
    spread = math.sqrt(error_a + error_b)
    if spread == 0:
        return TestResult(0.0, 1.0)
    t = (mean_a - mean_b) / spread
    freedom = (error_a + error_b) ** 2 / (error_a**2 / (count_a - 1) + error_b**2 / (count_b - 1))
    return TestResult(t, student_t_two_sided(abs(t), freedom))


def student_t_two_sided(t: float, freedom: float) -> float:
    """P(|T| >= t) for Student's t with ``freedom`` degrees of freedom."""
    return regularized_incomplete_beta(freedom / 2, 0.5, freedom / (freedom + t * t))


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), by the continued fraction of Numerical Recipes (Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return fraction


def samples_for_proportions(rate_a: float, rate_b: float) -> int | None:
    """Samples per group a two-proportion test needs to see this difference at 95 % with 80 %
    power (the pooled variance under the null, the separate ones under the alternative); None
    when the rates are equal."""
    difference = rate_a - rate_b
    if math.isclose(rate_a, rate_b, rel_tol=1e-9, abs_tol=1e-12):
        return None
    pooled = (rate_a + rate_b) / 2
    spread = Z_95 * math.sqrt(2 * pooled * (1 - pooled)) + Z_80_POWER * math.sqrt(
        rate_a * (1 - rate_a) + rate_b * (1 - rate_b)
    )
    return max(2, math.ceil(spread**2 / difference**2))


def samples_for_means(mean_a: float, mean_b: float, variance: float) -> int | None:
    """Samples per group a comparison of means needs at 95 % with 80 % power; None when the
    means are equal (to rounding)."""
    difference = mean_a - mean_b
    if math.isclose(mean_a, mean_b, rel_tol=1e-9, abs_tol=1e-12):
        return None
    return max(2, math.ceil(2 * (Z_95 + Z_80_POWER) ** 2 * variance / difference**2))
