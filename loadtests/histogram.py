"""A latency histogram with fixed log-linear buckets, so that histograms recorded in separate
worker processes merge exactly: a merge is a sum of bucket counts.

Bucket layout: each power of two from 1 µs to 2**32 µs (about 71.6 minutes) is split into 1024
equal sub-buckets, so a bucket's width is at most 1/1024 (0.098 %) of any value in it. Values
below 1 µs share the first bucket; values from 2**32 µs up share the last one. Beside the
buckets, the count, min and max are kept exactly and the sum (for the mean) as a float64.
"""

import math
from typing import Any

import numpy as np
import numpy.typing as npt

SUB_BUCKET_BITS = 10
SUB_BUCKETS = 1 << SUB_BUCKET_BITS
OCTAVES = 32
BUCKETS = OCTAVES * SUB_BUCKETS
RELATIVE_PRECISION = 1 / SUB_BUCKETS
"""The most a percentile can exceed the true value by, relative to it (for values from 1 µs)."""

SUMMARY_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


class LatencyHistogram:
    """Latencies in microseconds, to 1/1024 relative precision; mergeable across processes.

    Only the buckets between the lowest and highest value recorded are stored, in whole octaves
    of 8 KiB: 80 KiB for values from 100 µs to 50 ms, rather than 256 KiB for the full range.
    An empty histogram reports 0.0 for every statistic (NaN is not valid JSON). Not thread-safe.
    """

    def __init__(self) -> None:
        self._first_bucket = 0
        self._counts: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._count = 0
        self._sum_us = 0.0
        self._min_us = 0.0
        self._max_us = 0.0

    def record(self, value_us: float) -> None:
        """Count one latency; raise ``ValueError`` if it is negative or not finite."""
        if not 0.0 <= value_us < math.inf:
            raise ValueError(f"a latency must be finite and >= 0, not {value_us!r}")
        bucket = _bucket_of(value_us)
        self._cover(bucket, bucket)
        self._counts[bucket - self._first_bucket] += 1
        self._add_totals(1, float(value_us), float(value_us), float(value_us))

    def merge(self, other: "LatencyHistogram") -> None:
        """Add ``other``'s values to this histogram."""
        if other._count == 0:
            return
        other_first = other._first_bucket
        self._cover(other_first, other_first + other._counts.size - 1)
        start = other_first - self._first_bucket
        self._counts[start : start + other._counts.size] += other._counts
        self._add_totals(other._count, other._sum_us, other._min_us, other._max_us)

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return self._count

    @property
    def min_us(self) -> float:
        """The lowest value recorded, exactly (0.0 when empty)."""
        return self._min_us

    @property
    def max_us(self) -> float:
        """The highest value recorded, exactly (0.0 when empty)."""
        return self._max_us

    @property
    def mean_us(self) -> float:
        """The mean of the values recorded (0.0 when empty)."""
        return self._sum_us / self._count if self._count else 0.0

    def percentile(self, q: float) -> float:
        """The value at percentile ``q`` (0 to 100), by nearest rank: the upper bound of the
        bucket holding the ceil(q% * count)-th smallest value, but never above the exact max.
        It is at most ``RELATIVE_PRECISION`` above the true value (values from 1 µs)."""
        return self._percentiles([q])[0]

    def percentiles_ms(self) -> dict[str, float]:
        """p50, p90, p99, p999, max and mean, in milliseconds."""
        values_us = self._percentiles(list(SUMMARY_PERCENTILES.values()))
        summary = {
            name: value / 1000 for name, value in zip(SUMMARY_PERCENTILES, values_us, strict=True)
        }
        summary["max"] = self._max_us / 1000
        summary["mean"] = self.mean_us / 1000
        return summary

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-serializable form: the non-empty buckets and the exact totals."""
        occupied = np.flatnonzero(self._counts)
        return {
            "buckets": {
                str(self._first_bucket + int(position)): int(self._counts[position])
                for position in occupied
            },
            "count": self._count,
            "sum_us": self._sum_us,
            "min_us": self._min_us,
            "max_us": self._max_us,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyHistogram":
        """The histogram that ``to_dict`` described; ``ValueError`` if it is inconsistent."""
        buckets = {int(index): int(count) for index, count in data["buckets"].items()}
        if any(not 0 <= index < BUCKETS or count <= 0 for index, count in buckets.items()):
            raise ValueError("histogram buckets out of range or not positive")
        if sum(buckets.values()) != data["count"]:
            raise ValueError("histogram count does not match its buckets")
        histogram = cls()
        if buckets:
            histogram._cover(min(buckets), max(buckets))
            for index, count in buckets.items():
                histogram._counts[index - histogram._first_bucket] = count
            histogram._add_totals(
                int(data["count"]),
                float(data["sum_us"]),
                float(data["min_us"]),
                float(data["max_us"]),
            )
        return histogram

    def _percentiles(self, qs: list[float]) -> list[float]:
        if any(not 0.0 <= q <= 100.0 for q in qs):
            raise ValueError(f"percentiles must be between 0 and 100, not {qs}")
        if self._count == 0:
            return [0.0 for _ in qs]
        cumulative = np.cumsum(self._counts)
        values = []
        for q in qs:
            # rounding first keeps q=99.9 of 1000 values at rank 999, not 999.0000000000001 -> 1000
            rank = max(1, math.ceil(round(q / 100 * self._count, 9)))
            bucket = self._first_bucket + int(np.searchsorted(cumulative, rank))
            # values above the range were clamped into the last bucket: its only sound bound is max
            upper = math.inf if bucket == BUCKETS - 1 else _upper_bound(bucket)
            values.append(min(upper, self._max_us))
        return values

    def _cover(self, first: int, last: int) -> None:
        """Grow the stored span so it holds buckets ``first`` to ``last``."""
        stored_end = self._first_bucket + self._counts.size
        if self._counts.size and self._first_bucket <= first and last < stored_end:
            return
        # whole octaves, so a run of ever larger values reallocates at most once per octave
        new_first = (first // SUB_BUCKETS) * SUB_BUCKETS
        new_end = (last // SUB_BUCKETS + 1) * SUB_BUCKETS
        if self._counts.size:
            new_first = min(new_first, self._first_bucket)
            new_end = max(new_end, stored_end)
        grown = np.zeros(new_end - new_first, dtype=np.int64)
        offset = self._first_bucket - new_first
        grown[offset : offset + self._counts.size] = self._counts
        self._first_bucket, self._counts = new_first, grown

    def _add_totals(self, count: int, sum_us: float, min_us: float, max_us: float) -> None:
        if self._count == 0:
            self._min_us, self._max_us = min_us, max_us
        else:
            self._min_us, self._max_us = min(self._min_us, min_us), max(self._max_us, max_us)
        self._count += count
        self._sum_us += sum_us


def _bucket_of(value_us: float) -> int:
    """The bucket of one value."""
    if value_us < 1.0:
        return 0
    mantissa, exponent = math.frexp(value_us)  # value = mantissa * 2**exponent, 0.5 <= mantissa < 1
    index = (exponent - 1) * SUB_BUCKETS + int((mantissa * 2 - 1) * SUB_BUCKETS)
    return min(index, BUCKETS - 1)


def _upper_bound(bucket: int) -> float:
    """The smallest value above bucket ``bucket``: 2**octave * (1 + (sub-bucket + 1) / 1024)."""
    octave, sub_bucket = divmod(bucket, SUB_BUCKETS)
    return math.ldexp(SUB_BUCKETS + sub_bucket + 1, octave - SUB_BUCKET_BITS)
