"""Drift records and how a statistic's value becomes a status."""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

Status = Literal["ok", "warn", "alert"]
LEVELS: dict[Status, int] = {"ok": 0, "warn": 1, "alert": 2}
STATUS_FEATURE = "*"  # the feature name of a version's overall status record


@dataclass(frozen=True, slots=True)
class Bound:
    """The warn and alert levels of one statistic (None: that level is not used). For p-values
    lower is worse."""

    warn: float | None = None
    alert: float | None = None
    lower_is_worse: bool = False

    def status(self, value: float) -> Status:
        """The status ``value`` earns."""
        levels: tuple[tuple[Status, float | None], ...] = (
            ("alert", self.alert),
            ("warn", self.warn),
        )
        for level, limit in levels:
            if limit is not None and (
                (value <= limit) if self.lower_is_worse else (value >= limit)
            ):
                return level
        return "ok"


DEFAULT_BOUNDS: dict[str, Bound] = {
    "psi": Bound(warn=0.1, alert=0.25),
    "ks_pvalue": Bound(alert=0.01, lower_is_worse=True),
    "chi2_pvalue": Bound(alert=0.01, lower_is_worse=True),
    "nan_rate": Bound(warn=0.01, alert=0.05),
    "out_of_range_rate": Bound(warn=0.05, alert=0.2),
}
P_VALUES = frozenset({"ks_pvalue", "chi2_pvalue"})
RATES = frozenset({"nan_rate", "out_of_range_rate"})  # judged on windows of any size
DEFAULT_MIN_WINDOW = 100


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Bounds per statistic; the window size below which only the rates are judged (a
    distribution seen in a handful of samples says little); and whether p-values are corrected
    for the number of features tested together (Bonferroni: a version with 75 features would
    otherwise see a false alarm in about half of its windows at 0.01)."""

    bounds: dict[str, Bound]
    min_window: int = DEFAULT_MIN_WINDOW
    correct_p_values: bool = True

    def status(self, statistic: str, value: float, window: int, tests: int = 1) -> Status:
        """The status of one statistic's value on a window of ``window`` samples, one of
        ``tests`` features compared at once."""
        bound = self.bounds.get(statistic)
        if bound is None or not math.isfinite(value):
            return "ok"
        if statistic not in RATES and window < self.min_window:
            return "ok"
        if statistic in P_VALUES and self.correct_p_values:
            value = min(value * max(tests, 1), 1.0)
        return bound.status(value)


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe of some statuses (ok for none)."""
    found: Status = "ok"
    for status in statuses:
        if LEVELS[status] > LEVELS[found]:
            found = status
    return found


@dataclass(frozen=True, slots=True)
class DriftRecord:
    """One statistic of one feature of one version over one window."""

    time: float  # seconds since the epoch, at the window's end
    endpoint: str
    version: str
    feature: str
    statistic: str
    value: float
    status: Status
    window_samples: int
    window_start: float

    def row(self) -> tuple[float | str | int | None, ...]:
        """The record's fields in order, a non-finite value as None (JSON's null, SQL's NULL:
        a statistic not defined on the window, e.g. one whose values were all NaN)."""
        value = self.value if math.isfinite(self.value) else None
        return (
            self.time,
            self.endpoint,
            self.version,
            self.feature,
            self.statistic,
            value,
            self.status,
            self.window_samples,
            self.window_start,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "DriftRecord":
        """The record of a row of fields in order (a None value read as NaN); ValueError or
        TypeError when the row is not a record."""
        time, endpoint, version, feature, statistic, value, status, samples, start = row
        if status not in LEVELS:
            raise ValueError(f"unknown status {status!r}")
        return cls(
            float(time),
            str(endpoint),
            str(version),
            str(feature),
            str(statistic),
            math.nan if value is None else float(value),
            status,
            int(samples),
            float(start),
        )


FIELDS = tuple(field.name for field in fields(DriftRecord))
