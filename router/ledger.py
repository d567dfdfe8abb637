"""What each version of each endpoint has served: requests, server-side errors, recent
latencies and rewards. The guarded rollout and the A/B readout read it."""

import math
import time
from collections import deque
from dataclasses import dataclass, field

RECENT = 4096  # latest requests kept per version for percentiles and rollout windows


@dataclass(frozen=True, slots=True)
class Window:
    """Requests, server-side errors and latency percentiles over a span of recent requests."""

    requests: int
    errors: int
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None

    @property
    def error_rate(self) -> float:
        """Errors per request, 0 when there were none."""
        return self.errors / self.requests if self.requests else 0.0


@dataclass(slots=True)
class Rewards:
    """Rewards credited to a version."""

    count: int = 0
    total: float = 0.0
    total_squares: float = 0.0
    binary: bool = True  # every reward so far was 0 or 1

    def add(self, value: float) -> None:
        """Credit one reward."""
        self.count += 1
        self.total += value
        self.total_squares += value * value
        self.binary = self.binary and value in (0, 1)

    @property
    def mean(self) -> float:
        """The mean reward, 0 before any."""
        return self.total / self.count if self.count else 0.0

    @property
    def variance(self) -> float:
        """The sample variance, 0 with fewer than two rewards."""
        if self.count < 2:
            return 0.0
        return max(0.0, (self.total_squares - self.total**2 / self.count) / (self.count - 1))

    def interval(self) -> tuple[float, float] | None:
        """The 95 % interval of the mean (Wilson's for 0/1 rewards); None before any reward,
        and for real rewards before two."""
        z = 1.959963984540054
        if self.binary and self.count:
            p, n = self.mean, self.count
            centre = (p + z * z / (2 * n)) / (1 + z * z / n)
            half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
        if self.count < 2:
            return None
        half = z * math.sqrt(self.variance / self.count)
        return self.mean - half, self.mean + half


@dataclass(slots=True)
class VersionTraffic:
    """One version's account."""

    requests: int = 0
    errors: int = 0
    recent: deque[tuple[float, float, bool]] = field(default_factory=lambda: deque(maxlen=RECENT))
    rewards: Rewards = field(default_factory=Rewards)

    def window(self, since: float = 0.0) -> Window:
        """Requests since the monotonic instant ``since`` among the recent ones."""
        latencies = []
        errors = 0
        for at, seconds, ok in reversed(self.recent):
            if at < since:
                break
            latencies.append(seconds)
            errors += not ok
        latencies.sort()
        return Window(
            len(latencies),
            errors,
            _percentile(latencies, 0.50),
            _percentile(latencies, 0.90),
            _percentile(latencies, 0.99),
        )


class TrafficLedger:
    """The accounts of every endpoint and version that has served."""

    def __init__(self) -> None:
        self._accounts: dict[tuple[str, str], VersionTraffic] = {}

    def account(self, endpoint: str, version: str) -> VersionTraffic:
        """One version's account, opened on first use."""
        key = (endpoint, version)
        found = self._accounts.get(key)
        if found is None:
            found = self._accounts[key] = VersionTraffic()
        return found

    def served(self, endpoint: str, version: str, seconds: float, ok: bool) -> None:
        """Record a request that ended, successfully or with a server-side error."""
        account = self.account(endpoint, version)
        account.requests += 1
        account.errors += not ok
        account.recent.append((time.monotonic(), seconds, ok))


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]
