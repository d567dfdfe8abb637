"""Routes as config and the admin API write them: one schema, validated strictly, whichever of
the two it comes from.

    {"policy": "latest"}
    {"policy": "fixed", "version": "2"}
    {"policy": "canary", "weights": {"1": 90, "2": 10}}
    {"policy": "blue_green", "live": "1", "staged": "2"}
    {"policy": "bandit", "algorithm": "thompson", "arms": ["1", "2"]}
    {"policy": "rollout", "stable": "1", "canary": "2", "steps": [1, 5, 25, 50, 100]}

each optionally with ``"shadow": {"version": "3", "rate": 0.5}``.
"""

import itertools
import math
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from turnout.errors import InvalidInput
from turnout.schema import VERSION_PATTERN, Strict, describe_errors, version_text

Policy = Literal["latest", "fixed", "canary", "blue_green", "bandit", "rollout"]
Version = Annotated[str, Field(pattern=VERSION_PATTERN)]
# Numbers as numbers: a JSON true or "90" is a mistake to report, not a 1.0 or 90.0 to apply.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True)]

# The fields each policy takes; the others must be absent.
_POLICY_FIELDS: dict[str, set[str]] = {
    "latest": set(),
    "fixed": {"version"},
    "canary": {"weights"},
    "blue_green": {"live", "staged"},
    "bandit": {"algorithm", "arms", "epsilon", "reward"},
    "rollout": {
        "stable",
        "canary",
        "steps",
        "step_interval_s",
        "min_requests",
        "max_error_rate_increase",
        "max_p99_ratio",
    },
}
_REQUIRED_FIELDS: dict[str, set[str]] = {
    "fixed": {"version"},
    "canary": {"weights"},
    "blue_green": {"live"},
    "bandit": {"arms"},
    "rollout": {"stable", "canary"},
}


class ShadowConfig(Strict):
    """Mirror a share of the route's traffic to another version, answering only from the
    primary."""

    version: Version
    rate: Annotated[Number, Field(ge=0.0, le=1.0)] = 1.0
    max_inflight: Annotated[Count, Field(ge=1, le=10_000)] = 64

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> str:
        return version_text(value)


class RouteConfig(Strict):
    """How an endpoint's traffic is split over its model's versions."""

    policy: Policy
    version: Version | None = None
    weights: dict[Version, Annotated[Number, Field(ge=0.0)]] | None = None
    live: Version | None = None
    staged: Version | None = None
    algorithm: Literal["epsilon_greedy", "ucb1", "thompson"] | None = None
    arms: Annotated[list[Version], Field(min_length=2)] | None = None
    epsilon: Annotated[Number, Field(ge=0.0, le=1.0)] | None = None
    reward: Literal["binary", "real"] | None = None
    stable: Version | None = None
    canary: Version | None = None
    steps: (
        Annotated[list[Annotated[Number, Field(gt=0.0, le=100.0)]], Field(min_length=1)] | None
    ) = None
    step_interval_s: Annotated[Number, Field(gt=0.0)] | None = None
    min_requests: Annotated[Count, Field(ge=1)] | None = None
    max_error_rate_increase: Annotated[Number, Field(ge=0.0, le=1.0)] | None = None
    max_p99_ratio: Annotated[Number, Field(ge=1.0)] | None = None
    shadow: ShadowConfig | None = None

    @field_validator("version", "live", "staged", "stable", "canary", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return None if value is None else version_text(value)

    @field_validator("arms", mode="before")
    @classmethod
    def _arm_texts(cls, value: Any) -> Any:
        return [version_text(arm) for arm in value] if isinstance(value, list) else value

    @field_validator("weights", mode="before")
    @classmethod
    def _weight_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        weights = {version_text(key): weight for key, weight in value.items()}
        if len(weights) != len(value):
            raise ValueError("each version at most once")
        return weights

    @model_validator(mode="after")
    def _fields_of_the_policy(self) -> "RouteConfig":
        given = {name for name in _all_policy_fields() if getattr(self, name) is not None}
        extra = sorted(given - _POLICY_FIELDS[self.policy])
        if extra:
            raise ValueError(f"{', '.join(extra)}: not used by policy {self.policy}")
        missing = sorted(_REQUIRED_FIELDS.get(self.policy, set()) - given)
        if missing:
            raise ValueError(f"{', '.join(missing)}: required by policy {self.policy}")
        if self.weights is not None and len(self.weights) < 2:
            raise ValueError(
                "weights: a canary splits traffic between at least two versions "
                "(policy fixed sends it all to one)"
            )
        if self.weights is not None and not any(self.weights.values()):
            raise ValueError("weights: at least one weight must be positive")
        if self.weights is not None and not math.isfinite(sum(self.weights.values())):
            raise ValueError("weights: their sum must be finite")
        if self.arms is not None and len(set(self.arms)) != len(self.arms):
            raise ValueError("arms: each version at most once")
        if self.live is not None and self.live == self.staged:
            raise ValueError("staged: must differ from live")
        if self.stable is not None and self.stable == self.canary:
            raise ValueError("canary: must differ from stable")
        if self.steps is not None and any(a >= b for a, b in itertools.pairwise(self.steps)):
            raise ValueError("steps: must increase")
        return self

    def versions(self) -> set[str]:
        """Every version the route may send traffic to, its shadow included."""
        return {version for _, version in self.named_versions()}

    def named_versions(self) -> list[tuple[str, str]]:
        """Every version the route names, with the field that names it (``weights.2``,
        ``arms[1]``, ``shadow.version``)."""
        named = [
            (field, getattr(self, field))
            for field in ("version", "live", "staged", "stable", "canary")
            if getattr(self, field) is not None
        ]
        named += [(f"weights.{version}", version) for version in self.weights or {}]
        named += [(f"arms[{index}]", version) for index, version in enumerate(self.arms or [])]
        if self.shadow is not None:
            named.append(("shadow.version", self.shadow.version))
        return named

    def document(self) -> dict[str, Any]:
        """The route as the admin API shows it (fields the route does not give are omitted)."""
        return self.model_dump(exclude_none=True, mode="json")


def _all_policy_fields() -> set[str]:
    return set().union(*_POLICY_FIELDS.values())


def parse_route(data: Any, where: str = "") -> RouteConfig:
    """A route from JSON or YAML data; InvalidInput naming each bad field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{where or 'route'}: must be an object with a 'policy'")
    try:
        return RouteConfig.model_validate(data)
    except ValidationError as error:
        prefix = f"{where}." if where else ""
        raise InvalidInput("; ".join(prefix + line for line in describe_errors(error))) from None
