"""The A/B readout of an endpoint: per version, traffic, errors, latency and rewards, and a
significance test between versions with a verdict in plain words."""

import itertools
from typing import Any

from turnout.router.ledger import VersionTraffic
from turnout.router.stats import (
    samples_for_means,
    samples_for_proportions,
    two_proportions,
    welch,
)

SIGNIFICANCE = 0.05


def readout(endpoint: str, accounts: dict[str, VersionTraffic]) -> dict[str, Any]:
    """The report of ``endpoint`` over the versions in ``accounts`` (lowest first)."""
    versions = sorted(accounts, key=int)
    report: dict[str, Any] = {
        "endpoint": endpoint,
        "versions": {version: _version(accounts[version]) for version in versions},
        "comparisons": [],
    }
    for first, second in itertools.combinations(versions, 2):
        a, b = accounts[first], accounts[second]
        report["comparisons"].append(
            {
                "versions": [first, second],
                "error_rate": _error_rates(first, a, second, b),
                "reward": _rewards(first, a, second, b),
            }
        )
    return report


def _version(account: VersionTraffic) -> dict[str, Any]:
    window = account.window()
    rewards = account.rewards
    interval = rewards.interval()
    return {
        "requests": account.requests,
        "errors": account.errors,
        "error_rate": account.errors / account.requests if account.requests else 0.0,
        "latency_ms": {
            "p50": _ms(window.p50_s),
            "p90": _ms(window.p90_s),
            "p99": _ms(window.p99_s),
        },
        "rewards": {
            "count": rewards.count,
            "mean": rewards.mean if rewards.count else None,
            "interval_95": list(interval) if interval else None,
        },
    }


def _error_rates(first: str, a: VersionTraffic, second: str, b: VersionTraffic) -> dict[str, Any]:
    if a.requests == 0 or b.requests == 0:
        return _untested("not enough data yet (no requests for one version)")
    test = two_proportions(a.errors, a.requests, b.errors, b.requests)
    rate_a = a.errors / a.requests if a.requests else 0.0
    rate_b = b.errors / b.requests if b.requests else 0.0
    # Fewer errors is better: the version with the lower rate wins.
    better = first if rate_a < rate_b else second
    worse = second if better == first else first
    needed = samples_for_proportions(rate_a, rate_b)
    return {
        "test": "two-proportion z-test",
        "statistic": test.statistic,
        "p_value": test.p_value,
        "verdict": _verdict(test.p_value, better, worse, needed, min(a.requests, b.requests)),
    }


def _rewards(first: str, a: VersionTraffic, second: str, b: VersionTraffic) -> dict[str, Any]:
    ra, rb = a.rewards, b.rewards
    if ra.count == 0 or rb.count == 0:
        return _untested("not enough data yet (no rewards for one version)")
    better = first if ra.mean > rb.mean else second
    worse = second if better == first else first
    if ra.binary and rb.binary:
        test = two_proportions(round(ra.total), ra.count, round(rb.total), rb.count)
        name = "two-proportion z-test"
        needed = samples_for_proportions(ra.mean, rb.mean)
    else:
        test = welch(ra.mean, ra.variance, ra.count, rb.mean, rb.variance, rb.count)
        name = "Welch's t-test"
        needed = samples_for_means(ra.mean, rb.mean, max(ra.variance, rb.variance))
    have = min(ra.count, rb.count)
    verdict = (
        _verdict(test.p_value, better, worse, needed, have)
        if have >= 2
        else "not enough data yet (fewer than 2 rewards for one version)"
    )
    return {"test": name, "statistic": test.statistic, "p_value": test.p_value, "verdict": verdict}


def _untested(verdict: str) -> dict[str, Any]:
    return {"test": None, "statistic": None, "p_value": None, "verdict": verdict}


def _verdict(p_value: float, better: str, worse: str, needed: int | None, have: int) -> str:
    if p_value < SIGNIFICANCE:
        return f"{better} is better than {worse} at 95%"
    if needed is None or needed <= have:
        return "no difference detected"
    return f"not enough data yet (need about {needed - have} more per version)"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
