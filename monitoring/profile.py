"""Reference profiles (what each feature looked like in the reference data) and the comparison
of a window of live values with them."""

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from turnout.monitoring.features import Column
from turnout.monitoring.records import Status, Thresholds, worst
from turnout.monitoring.statistics import (
    bin_counts,
    chi_square,
    js_distance,
    ks_two_sample,
    psi,
    quantile_edges,
    wasserstein,
)

REFERENCE_SAMPLE = 10_000  # reference values kept for the KS test and Wasserstein distance
TOP_CATEGORIES = 50  # categories of a categorical feature tracked one by one; the rest pooled


@dataclass(frozen=True, slots=True)
class NumericReference:
    """A numeric feature's reference: a sample, quantile bins with their counts, and range."""

    sample: np.ndarray
    edges: np.ndarray
    counts: np.ndarray
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class CategoricalReference:
    """A categorical feature's reference: its most common categories and their counts (the
    last count pools every other category), and the set of all its categories."""

    categories: tuple[str, ...]
    counts: np.ndarray
    seen: frozenset[str]  # every category of the reference, tracked or pooled


Reference = NumericReference | CategoricalReference


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """A window of one feature against its reference: each statistic's value and status."""

    values: dict[str, float]
    statuses: dict[str, Status]

    @property
    def status(self) -> Status:
        """The worst status of the feature's statistics."""
        return worst(self.statuses.values())


def reference_of(column: Column, rng: np.random.Generator) -> Reference:
    """The reference profile of one feature's reference values."""
    if column.numeric:
        values = column.values[np.isfinite(column.values)]
        if len(values) > REFERENCE_SAMPLE:
            values = rng.choice(values, REFERENCE_SAMPLE, replace=False)
        values = np.sort(values)
        edges = quantile_edges(values) if len(values) else np.array([])
        return NumericReference(
            values,
            edges,
            bin_counts(values, edges),
            float(values[0]) if len(values) else 0.0,
            float(values[-1]) if len(values) else 0.0,
        )
    frequency = Counter(_keys(column.values))
    top = tuple(category for category, _ in frequency.most_common(TOP_CATEGORIES))
    counts = [frequency[category] for category in top]
    counts.append(sum(frequency.values()) - sum(counts))
    return CategoricalReference(top, np.asarray(counts, dtype=np.int64), frozenset(frequency))


def compare(
    reference: Reference, column: Column, thresholds: Thresholds, tests: int = 1
) -> FeatureDrift:
    """The drift statistics of a window of live values, and their statuses (the feature one of
    ``tests`` compared at once)."""
    window = len(column.values)
    if isinstance(reference, NumericReference):
        values = _numeric(reference, column.values)
    else:
        values = _categorical(reference, column.values)
    statuses = {
        name: thresholds.status(name, value, window, tests) for name, value in values.items()
    }
    return FeatureDrift(values, statuses)


def _numeric(reference: NumericReference, live: np.ndarray) -> dict[str, float]:
    live = np.asarray(live, dtype=np.float64)
    finite = live[np.isfinite(live)]
    total = max(len(live), 1)
    counts = bin_counts(finite, reference.edges)
    outside = np.count_nonzero((finite < reference.low) | (finite > reference.high))
    rates = {"nan_rate": (len(live) - len(finite)) / total, "out_of_range_rate": outside / total}
    if len(finite) == 0 or len(reference.sample) == 0:
        # No distribution to compare: the comparisons are undefined (null in the sinks).
        undefined = ("psi", "ks_statistic", "ks_pvalue", "js_distance", "wasserstein")
        return {**dict.fromkeys(undefined, math.nan), **rates}
    ks = ks_two_sample(reference.sample, finite)
    return {
        "psi": psi(reference.counts, counts),
        "ks_statistic": ks.statistic,
        "ks_pvalue": ks.p_value,
        "js_distance": js_distance(reference.counts, counts),
        "wasserstein": wasserstein(reference.sample, finite),
        **rates,
    }


def _categorical(reference: CategoricalReference, live: np.ndarray) -> dict[str, float]:
    index = {category: position for position, category in enumerate(reference.categories)}
    counts = np.zeros(len(reference.categories) + 1, dtype=np.int64)
    unseen = 0
    for key in _keys(live):
        counts[index.get(key, len(reference.categories))] += 1
        unseen += key not in reference.seen
    # The goodness of fit over the categories the reference has: one it never had would make
    # the test's expected count (a smoothing floor) tiny and the statistic explode; such
    # values are what out_of_range_rate reports.
    known = reference.counts > 0
    chi2 = chi_square(reference.counts[known], counts[known])
    return {
        "psi": psi(reference.counts, counts),
        "chi2_statistic": chi2.statistic,
        "chi2_pvalue": chi2.p_value,
        "out_of_range_rate": unseen / max(len(live), 1),
    }


def _keys(values: np.ndarray) -> list[str]:
    return [str(value) for value in values.reshape(-1).tolist()]
