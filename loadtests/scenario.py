"""Load-test scenarios: timed phases, each with its load (concurrency or arrival rate), its mix of
endpoints, drift injected into its inputs, ops actions at given moments, rewards for bandit
endpoints, and what it expects of the server.

A scenario file is YAML, validated as a whole like turnout.yaml (``phases[1].rate: ...``).
Without one, the command line makes a one-phase scenario.
"""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from turnout.schema import NAME_PATTERN, Strict, describe_errors
from turnout.server.config import ConfigError, read_yaml, validate_as
from turnout.server.monitoring_config import resolve_path

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Share = Annotated[float, Field(ge=0, le=1)]


class DriftConfig(Strict):
    """A change made to the inputs from ``start_s`` into the phase on.

    ``mean_shift`` adds ``amount`` standard deviations to each chosen feature; ``scale``
    multiplies each one's spread around its mean by ``amount``; ``category_swap`` exchanges the
    values ``swap[0]`` and ``swap[1]`` of integer inputs.
    """

    kind: Literal["mean_shift", "scale", "category_swap"]
    amount: float = 1.0
    features: list[Annotated[int, Field(ge=0)]] | None = None  # columns; None: every column
    swap: tuple[int, int] | None = None
    start_s: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _swap_for_swaps(self) -> "DriftConfig":
        if self.kind == "category_swap" and self.swap is None:
            raise ValueError("category_swap needs swap: [A, B]")
        return self


class ActionConfig(Strict):
    """An ops action through the admin API, ``at_s`` seconds into the phase."""

    at_s: Annotated[float, Field(ge=0)] = 0.0
    action: Literal["set_weights", "set_route", "promote", "rollback"]
    endpoint: Name
    weights: dict[str, Annotated[float, Field(ge=0)]] | None = None  # set_weights (canary)
    route: dict[str, Any] | None = None  # set_route: a route body as the admin API takes it

    @model_validator(mode="after")
    def _arguments(self) -> "ActionConfig":
        if self.action == "set_weights" and not self.weights:
            raise ValueError("set_weights needs weights: {VERSION: WEIGHT, ...}")
        if self.action == "set_route" and not self.route:
            raise ValueError("set_route needs route: {policy: ..., ...}")
        return self


class ShareExpectation(Strict):
    """The share of an endpoint's answered requests that a version served."""

    endpoint: Name | None = None  # default: the phase's only endpoint
    version: str
    min: Share = 0.0
    max: Share = 1.0


class Expectations(Strict):
    """What a phase asserts; a failed assertion makes the run exit 1."""

    p50_ms_below: Annotated[float, Field(gt=0)] | None = None
    p99_ms_below: Annotated[float, Field(gt=0)] | None = None
    error_rate_below: Annotated[float, Field(ge=0, le=1)] | None = None
    throughput_rps_above: Annotated[float, Field(ge=0)] | None = None
    share: list[ShareExpectation] = Field(default_factory=list)


class PhaseConfig(Strict):
    """One timed phase of load."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    duration_s: Annotated[float, Field(gt=0, le=86_400)]
    concurrency: Annotated[int, Field(ge=1, le=100_000)] | None = None
    rate: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    arrival: Literal["poisson", "fixed"] = "poisson"
    endpoints: dict[Name, Annotated[float, Field(gt=0)]] | None = None  # mix by weight
    data: Path | None = None  # this phase's rows (default: the scenario's)
    drift: DriftConfig | None = None  # injected into the inputs from drift.start_s on
    routing_keys: Annotated[int, Field(ge=1)] | None = None  # sticky keys drawn per request
    rewards: dict[Name, dict[str, Share]] | None = None  # endpoint → version → P(reward 1)
    actions: list[ActionConfig] = Field(default_factory=list)
    expect: Expectations = Expectations()

    @field_validator("data")
    @classmethod
    def _data_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _existing(value, info)

    @model_validator(mode="after")
    def _one_load(self) -> "PhaseConfig":
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give either concurrency (closed loop) or rate (open loop)")
        for action in self.actions:
            if action.at_s > self.duration_s:
                raise ValueError(f"an action at {action.at_s} s is past the phase's end")
        return self


class Scenario(Strict):
    """Phases run one after another, sending rows of ``data`` (an .npz keyed by input name;
    default: the demo's reference set for the demo model, random rows otherwise)."""

    phases: Annotated[list[PhaseConfig], Field(min_length=1)]
    data: Path | None = None
    rows_per_request: Annotated[int, Field(ge=1, le=4096)] = 1

    @field_validator("data")
    @classmethod
    def _data_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _existing(value, info)

    @model_validator(mode="after")
    def _unique_names(self) -> "Scenario":
        names = [phase.name for phase in self.phases]
        if len(set(names)) != len(names):
            raise ValueError("phase names must be unique")
        return self

    @property
    def duration_s(self) -> float:
        """The length of every phase together."""
        return sum(phase.duration_s for phase in self.phases)


def _existing(value: Path | None, info: ValidationInfo) -> Path | None:
    """A data file named in the scenario, relative to the scenario's folder."""
    path = resolve_path(value, info)
    if path is not None and not path.is_file():
        raise ValueError("file not found")
    return path


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; ConfigError names each bad field."""
    return validate_as(Scenario, read_yaml(path), path, base_dir=path.parent)


def one_phase(
    endpoint: str,
    concurrency: int | None,
    rate: float | None,
    duration_s: float,
    rows_per_request: int,
) -> Scenario:
    """The scenario the command line's options describe."""
    try:
        return Scenario.model_validate(
            {
                "rows_per_request": rows_per_request,
                "phases": [
                    {
                        "name": "main",
                        "duration_s": duration_s,
                        "concurrency": concurrency,
                        "rate": rate,
                        "endpoints": {endpoint: 1.0},
                    }
                ],
            }
        )
    except ValidationError as error:
        raise ConfigError("command line", describe_errors(error)) from None
