"""Reading Prometheus' text exposition format: the samples of a ``/metrics`` scrape."""

import re
from collections.abc import Mapping
from dataclasses import dataclass

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of the exposition: a metric name, its labels and its value."""

    name: str
    labels: Mapping[str, str]
    value: float


class Scrape:
    """Every sample of one scrape, with lookups by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            assert match is not None, f"not a sample line: {line!r}"
            labels = {
                label["key"]: _unescape(label["value"])
                for label in _LABEL.finditer(match["labels"] or "")
            }
            self.samples.append(Sample(match["name"], labels, float(match["value"])))

    def find(self, name: str, **labels: str) -> list[Sample]:
        """The samples of ``name`` whose labels include ``labels``."""
        return [
            sample
            for sample in self.samples
            if sample.name == name
            and all(sample.labels.get(key) == value for key, value in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample of ``name`` with exactly these labels (0 when absent:
        a series that has not been touched yet)."""
        found = [sample for sample in self.find(name, **labels) if dict(sample.labels) == labels]
        assert len(found) <= 1, found
        return found[0].value if found else 0.0

    def label_values(self, label: str, prefix: str = "turnout_") -> set[str]:
        """Every value ``label`` takes among the metrics whose names start with ``prefix``."""
        return {
            sample.labels[label]
            for sample in self.samples
            if sample.name.startswith(prefix) and label in sample.labels
        }


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda match: "\n" if match[1] == "n" else match[1], value)
