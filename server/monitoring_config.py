"""The drift monitoring part of turnout.yaml: per model version (``models[].monitoring``) and for
the process (``monitoring``: where records go)."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from turnout.monitoring.monitor import MonitorSettings
from turnout.monitoring.records import P_VALUES, Bound, Thresholds
from turnout.schema import Strict

MiB = 1024 * 1024


def resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """A path from config, relative to the file it came from."""
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return (Path(base) / value).resolve()


class BoundConfig(Strict):
    """Warn and alert levels of one statistic (leave one out to not use it)."""

    warn: float | None = None
    alert: float | None = None


def _bound(warn: float | None = None, alert: float | None = None) -> BoundConfig:
    return BoundConfig(warn=warn, alert=alert)


class ThresholdsConfig(Strict):
    """When a statistic makes a feature warn or alert. For p-values lower is worse."""

    psi: BoundConfig = _bound(0.1, 0.25)
    ks_statistic: BoundConfig = _bound()
    ks_pvalue: BoundConfig = _bound(alert=0.01)
    js_distance: BoundConfig = _bound()
    wasserstein: BoundConfig = _bound()
    chi2_statistic: BoundConfig = _bound()
    chi2_pvalue: BoundConfig = _bound(alert=0.01)
    nan_rate: BoundConfig = _bound(0.01, 0.05)
    out_of_range_rate: BoundConfig = _bound(0.05, 0.2)
    min_window: Annotated[int, Field(ge=1)] = 100
    p_value_correction: Literal["bonferroni", "none"] = "bonferroni"

    @model_validator(mode="after")
    def _ordered(self) -> "ThresholdsConfig":
        problems = []
        for name, bound in self._bounds().items():
            levels = [level for level in (bound.warn, bound.alert) if level is not None]
            if name in P_VALUES and any(not 0 < level < 1 for level in levels):
                problems.append(f"{name}: a p-value level must be between 0 and 1")
            if bound.warn is None or bound.alert is None:
                continue
            if name in P_VALUES and bound.warn < bound.alert:
                problems.append(f"{name}: warn must be at least alert (lower p-values are worse)")
            if name not in P_VALUES and bound.warn > bound.alert:
                problems.append(f"{name}: warn must not exceed alert")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _bounds(self) -> dict[str, BoundConfig]:
        return {
            name: value for name, value in self.__dict__.items() if isinstance(value, BoundConfig)
        }

    def thresholds(self) -> Thresholds:
        """The monitoring layer's thresholds."""
        return Thresholds(
            {
                name: Bound(bound.warn, bound.alert, lower_is_worse=name in P_VALUES)
                for name, bound in self._bounds().items()
            },
            self.min_window,
            correct_p_values=self.p_value_correction == "bonferroni",
        )


class WindowConfig(Strict):
    """A window closes after this many sampled rows or this many seconds, whichever first."""

    samples: Annotated[int, Field(ge=10, le=10_000_000)] = 1000
    seconds: Annotated[float, Field(gt=0)] = 60.0


class ModelMonitoring(Strict):
    """Drift monitoring of one model version."""

    sample_rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_samples_per_s: Annotated[float, Field(gt=0)] = 100.0
    reference: Path | None = None
    capture_reference: Annotated[int, Field(ge=10)] = 1000
    window: WindowConfig = WindowConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()

    @field_validator("reference")
    @classmethod
    def _reference_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = resolve_path(value, info)
        if path is None:
            return None
        if path.suffix not in (".npz", ".csv"):
            raise ValueError("must be a .npz or .csv file")
        if not path.is_file():
            raise ValueError("file not found")
        return path

    def settings(self) -> MonitorSettings:
        """The monitoring layer's settings."""
        return MonitorSettings(
            sample_rate=self.sample_rate,
            max_samples_per_s=self.max_samples_per_s,
            window_samples=self.window.samples,
            window_seconds=self.window.seconds,
            capture_reference=self.capture_reference,
            thresholds=self.thresholds.thresholds(),
        )


class JsonlSinkConfig(Strict):
    """Drift records as JSON lines, rotated by size."""

    path: Path | None = None  # default: <state_dir>/drift.jsonl
    max_bytes: Annotated[int, Field(ge=4096)] = 64 * MiB
    backups: Annotated[int, Field(ge=1, le=100)] = 5

    @field_validator("path")
    @classmethod
    def _relative(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info)


class SqliteSinkConfig(Strict):
    """Drift records in the table ``drift`` of an SQLite database."""

    path: Path

    @field_validator("path")
    @classmethod
    def _relative(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info) or value


class MonitoringConfig(Strict):
    """Where drift records go (the Prometheus gauges are always on) and how many samples may
    wait for the monitor."""

    jsonl: JsonlSinkConfig = JsonlSinkConfig()
    sqlite: SqliteSinkConfig | None = None
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    queue_bytes: Annotated[int, Field(ge=MiB)] = 256 * MiB
