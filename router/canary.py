"""Canary: traffic split by weight over two or more versions.

With a routing key the choice is sticky, by weighted rendezvous hashing: each version scores
``weight / -ln(u)`` with ``u`` a hash of the key and the version, and the best score wins. Every
key lands on a version with probability proportional to its weight, and changing weights moves
only the keys that must move (raising the canary from 5 % to 20 % moves keys only onto it).
Without a key, each request is drawn at random by weight.
"""

import hashlib
import math
import random
from collections.abc import Iterable, Iterator, Mapping

_SCALE = float(1 << 64)


class WeightedSplit:
    """Chooses a version by weight, sticky per routing key."""

    def __init__(self, weights: Mapping[str, float], rng: random.Random) -> None:
        self.weights = {version: weight for version, weight in weights.items() if weight > 0}
        self._versions = list(self.weights)
        self._cumulative = list(_running_sum(self.weights.values()))
        self._rng = rng

    def choose(self, routing_key: str | None) -> str:
        """The version for one request."""
        if len(self._versions) == 1:
            return self._versions[0]
        if routing_key is None:
            return self._rng.choices(self._versions, cum_weights=self._cumulative)[0]
        return max(self._versions, key=lambda version: self._score(routing_key, version))

    def _score(self, key: str, version: str) -> float:
        digest = hashlib.blake2b(f"{version}\0{key}".encode(), digest_size=8).digest()
        uniform = (int.from_bytes(digest, "big") + 0.5) / _SCALE
        return self.weights[version] / -math.log(uniform)


def _running_sum(values: Iterable[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total
