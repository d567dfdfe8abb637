"""LatencyHistogram (loadtests/histogram.py): percentiles against numpy's nearest-rank
percentile on seeded samples of several shapes, exact totals, exact merges, the JSON form, the
scalar and vector paths agreeing bucket for bucket, and the edges (sub-µs, huge, empty, invalid)."""

import json
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from turnout.loadtests.histogram import (
    BUCKETS,
    RELATIVE_PRECISION,
    LatencyHistogram,
    _bucket_of,
    _upper_bound,
)

SAMPLES = 20_011  # no tested percentile falls on a whole rank, where float rounding could shift it
PERCENTILES = [0.0, 1.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0]

Sample = npt.NDArray[np.float64]


def _lognormal(rng: np.random.Generator) -> Sample:
    return rng.lognormal(mean=7.0, sigma=1.0, size=SAMPLES)  # median ~1.1 ms, long tail


def _uniform(rng: np.random.Generator) -> Sample:
    return rng.uniform(1.0, 50_000.0, size=SAMPLES)


def _bimodal(rng: np.random.Generator) -> Sample:
    fast = rng.normal(500.0, 50.0, size=SAMPLES * 9 // 10)  # cache hits
    slow = rng.normal(20_000.0, 2_000.0, size=SAMPLES - fast.size)  # misses
    both: Sample = np.abs(np.concatenate([fast, slow]))
    rng.shuffle(both)
    return both


DISTRIBUTIONS: list[Callable[[np.random.Generator], Sample]] = [_lognormal, _uniform, _bimodal]


def _histogram_of(values: Sample) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(float(value))
    return histogram


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_percentiles_are_within_the_precision_above_numpy(
    distribution: Callable[[np.random.Generator], Sample],
) -> None:
    values = distribution(np.random.default_rng(7))
    histogram = _histogram_of(values)
    expected = np.percentile(values, PERCENTILES, method="inverted_cdf")  # nearest rank
    for q, truth in zip(PERCENTILES, expected, strict=True):
        assert truth <= histogram.percentile(q) <= truth * (1 + RELATIVE_PRECISION), q


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_count_min_max_and_mean_are_exact(
    distribution: Callable[[np.random.Generator], Sample],
) -> None:
    values = distribution(np.random.default_rng(11))
    histogram = _histogram_of(values)
    assert histogram.count == values.size
    assert histogram.min_us == values.min()
    assert histogram.max_us == values.max()
    assert histogram.mean_us == pytest.approx(values.mean(), rel=1e-12)
    assert histogram.percentile(100) == values.max()
    summary = histogram.percentiles_ms()
    assert list(summary) == ["p50", "p90", "p99", "p999", "max", "mean"]
    assert summary["max"] == values.max() / 1000
    assert summary["mean"] == pytest.approx(values.mean() / 1000, rel=1e-12)
    assert summary["p99"] == histogram.percentile(99) / 1000


@pytest.mark.parametrize(
    ("q", "rank"), [(0.0, 1), (50.0, 500), (99.0, 990), (99.9, 999), (100.0, 1000)]
)
def test_percentile_is_the_nearest_rank(q: float, rank: int) -> None:
    histogram = _histogram_of(np.arange(1.0, 1001.0))  # the k-th smallest value is k
    assert rank <= histogram.percentile(q) <= rank * (1 + RELATIVE_PRECISION)


def test_merging_split_data_gives_the_histogram_of_all_of_it() -> None:
    values = _lognormal(np.random.default_rng(3))
    whole = _histogram_of(values)
    merged = LatencyHistogram()
    for part in np.split(values, [0, 5, 9_000, 9_001]):  # an empty part and a single value
        merged.merge(_histogram_of(part))
    assert merged.to_dict()["buckets"] == whole.to_dict()["buckets"]
    assert (merged.count, merged.min_us, merged.max_us) == (whole.count, whole.min_us, whole.max_us)
    assert merged.mean_us == pytest.approx(whole.mean_us, rel=1e-12)
    assert [merged.percentile(q) for q in PERCENTILES] == [whole.percentile(q) for q in PERCENTILES]


def test_merging_histograms_of_disjoint_ranges() -> None:
    fast, slow = _histogram_of(np.array([2.0, 3.0])), _histogram_of(np.array([5e6, 7e8]))
    slow.merge(fast)  # grows the stored span downwards
    assert (
        slow.to_dict()["buckets"]
        == _histogram_of(np.array([2.0, 3.0, 5e6, 7e8])).to_dict()["buckets"]
    )
    assert (slow.min_us, slow.max_us, slow.count) == (2.0, 7e8, 4)


def test_to_dict_round_trips_through_json() -> None:
    histogram = _histogram_of(_bimodal(np.random.default_rng(5)))
    restored = LatencyHistogram.from_dict(json.loads(json.dumps(histogram.to_dict())))
    assert restored.to_dict() == histogram.to_dict()
    assert restored.percentiles_ms() == histogram.percentiles_ms()
    assert len(histogram.to_dict()["buckets"]) < 10_000  # sparse


@pytest.mark.parametrize(
    "data",
    [
        {"buckets": {"5": 2}, "count": 3, "sum_us": 1.0, "min_us": 1.0, "max_us": 1.0},
        {"buckets": {str(BUCKETS): 1}, "count": 1, "sum_us": 1.0, "min_us": 1.0, "max_us": 1.0},
        {"buckets": {"5": 0}, "count": 0, "sum_us": 0.0, "min_us": 0.0, "max_us": 0.0},
    ],
)
def test_from_dict_rejects_inconsistent_data(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="histogram"):
        LatencyHistogram.from_dict(data)


EDGE_VALUES = [
    0.0,
    -0.0,
    5e-324,  # the smallest subnormal
    0.999,
    1.0,
    1.0 + RELATIVE_PRECISION,  # the first bucket boundary
    1.0 + RELATIVE_PRECISION - 1e-15,
    1023.999,
    1024.0,
    3.6e9,  # one hour
    2.0**32 - 1,
    2.0**32,
    1e15,
]


def test_every_value_lies_inside_its_bucket() -> None:
    values = np.concatenate([EDGE_VALUES, _lognormal(np.random.default_rng(9))[:2000]])
    for value in values[(values >= 1.0) & (values < 2.0**32)]:
        bucket = _bucket_of(float(value))
        below = _upper_bound(bucket - 1) if bucket else 1.0
        assert below <= value < _upper_bound(bucket), value
        assert _upper_bound(bucket) - below <= below * RELATIVE_PRECISION * (1 + 1e-12)


def test_sub_microsecond_values_share_the_first_bucket() -> None:
    histogram = _histogram_of(np.array([0.0, 5e-324, 0.25, 0.999]))
    assert histogram.to_dict()["buckets"] == {"0": 4}
    assert histogram.min_us == 0.0
    assert histogram.percentile(50) == 0.999  # the bucket's bound (1.0009765625) is above max


def test_huge_values_clamp_to_the_last_bucket_but_max_stays_exact() -> None:
    histogram = _histogram_of(np.array([1e12, 1e13]))
    assert histogram.to_dict()["buckets"] == {str(BUCKETS - 1): 2}
    assert histogram.max_us == 1e13
    assert histogram.percentile(50) == 1e13  # in the clamped bucket only max is a sound bound
    histogram.record(3.6e9)  # one hour is inside the range, at full precision
    assert 3.6e9 <= histogram.percentile(0) <= 3.6e9 * (1 + RELATIVE_PRECISION)


def test_empty_histogram_reports_zeros() -> None:
    empty = LatencyHistogram()
    assert (empty.count, empty.min_us, empty.max_us, empty.mean_us) == (0, 0.0, 0.0, 0.0)
    assert [empty.percentile(q) for q in PERCENTILES] == [0.0] * len(PERCENTILES)
    assert empty.percentiles_ms() == dict.fromkeys(
        ("p50", "p90", "p99", "p999", "max", "mean"), 0.0
    )
    assert LatencyHistogram.from_dict(json.loads(json.dumps(empty.to_dict()))).count == 0
    full = _histogram_of(np.array([4.0]))
    full.merge(empty)
    assert (full.count, full.min_us, full.max_us) == (1, 4.0, 4.0)


@pytest.mark.parametrize("bad", [-1.0, -1e-9, math.nan, math.inf])
def test_invalid_values_are_refused_and_not_counted(bad: float) -> None:
    histogram = _histogram_of(np.array([10.0]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        histogram.record(bad)
    assert (histogram.count, histogram.max_us) == (1, 10.0)


@pytest.mark.parametrize("q", [-0.1, 100.1, math.nan])
def test_percentile_out_of_range_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        LatencyHistogram().percentile(q)
