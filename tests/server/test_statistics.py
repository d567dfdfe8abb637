"""Triton's statistics extension (server/statistics.py): what each request adds to its version's
statistics, and the view that joins them with the scheduler's counters (models/accounting.py),
which count executions and batch sizes."""

import time

import pytest

from turnout.models.accounting import VersionCounters
from turnout.models.types import RunStats
from turnout.server.statistics import Duration, Statistics, VersionStatistics

NS = 1_000_000_000
EMPTY = {"count": 0, "ns": 0}


def durations(view: dict[str, object]) -> dict[str, dict[str, int]]:
    stats = view["inference_stats"]
    assert isinstance(stats, dict)
    return stats


def test_duration_counts_and_adds_nanoseconds() -> None:
    duration = Duration()

    duration.add(0.5)
    duration.add(0.25)

    assert duration.view() == {"count": 2, "ns": 750_000_000}


def test_a_version_never_used_views_as_zeros() -> None:
    view = VersionStatistics().view("mlp", "1", None)

    assert view == {
        "name": "mlp",
        "version": "1",
        "last_inference": 0,
        "inference_count": 0,
        "execution_count": 0,
        "inference_stats": dict.fromkeys(
            (
                "success",
                "fail",
                "queue",
                "compute_input",
                "compute_infer",
                "compute_output",
                "cache_hit",
                "cache_miss",
            ),
            EMPTY,
        ),
        "batch_stats": [],
    }


def test_executions_and_batch_sizes_come_from_the_counters() -> None:
    counters = VersionCounters()
    counters.executed(4, 0.125, 0.5, 0.25)
    counters.executed(1, 0.0625, 0.25, 0.03125)
    counters.executed(4, 0.125, 0.25, 0.25)
    counters.executed(16, 0.5, 1.0, 0.75)

    view = VersionStatistics().view("mlp", "2", counters)

    assert view["execution_count"] == 4
    assert view["batch_stats"] == [
        {
            "batch_size": 1,
            "compute_input": {"count": 1, "ns": 62_500_000},
            "compute_infer": {"count": 1, "ns": 250_000_000},
            "compute_output": {"count": 1, "ns": 31_250_000},
        },
        {
            "batch_size": 4,
            "compute_input": {"count": 2, "ns": 250_000_000},
            "compute_infer": {"count": 2, "ns": 750_000_000},
            "compute_output": {"count": 2, "ns": 500_000_000},
        },
        {
            "batch_size": 16,
            "compute_input": {"count": 1, "ns": 500_000_000},
            "compute_infer": {"count": 1, "ns": NS},
            "compute_output": {"count": 1, "ns": 750_000_000},
        },
    ]


def test_requests_batched_into_one_execution_count_once_as_an_execution() -> None:
    """Three requests of two rows each that ran as one batch of six: six rows inferred in all,
    one execution of batch size 6. Executions are the scheduler's runs, not requests."""
    stats = VersionStatistics()
    counters = VersionCounters()
    for _ in range(3):
        stats.succeeded(0.5, 0.0, 0.0, RunStats(2, 0.125, 0.25, 6))
    counters.executed(6, 0.0, 0.25, 0.0)

    view = stats.view("mlp", "1", counters)

    assert view["inference_count"] == 6
    assert view["execution_count"] == 1
    assert [batch["batch_size"] for batch in view["batch_stats"]] == [6]
    assert durations(view)["success"] == {"count": 3, "ns": 1_500_000_000}
    assert durations(view)["queue"] == {"count": 3, "ns": 375_000_000}
    assert durations(view)["compute_infer"] == {"count": 3, "ns": 750_000_000}


def test_a_request_without_a_cache_adds_rows_and_durations() -> None:
    stats = VersionStatistics()
    before = int(time.time() * 1000)

    stats.succeeded(0.5, 0.125, 0.25, RunStats(3, 0.0625, 0.03125, 3))

    view = stats.view("mlp", "1", None)
    assert before <= view["last_inference"] <= int(time.time() * 1000)
    assert view["inference_count"] == 3
    inference = durations(view)
    assert inference["success"] == {"count": 1, "ns": 500_000_000}
    assert inference["compute_input"] == {"count": 1, "ns": 125_000_000}
    assert inference["compute_output"] == {"count": 1, "ns": 250_000_000}
    assert inference["queue"] == {"count": 1, "ns": 62_500_000}
    assert inference["compute_infer"] == {"count": 1, "ns": 31_250_000}
    assert inference["cache_hit"] == EMPTY
    assert inference["cache_miss"] == EMPTY
    assert inference["fail"] == EMPTY


def test_a_cache_miss_counts_its_whole_time_and_its_run() -> None:
    stats = VersionStatistics()

    stats.succeeded(0.5, 0.125, 0.25, RunStats(2, 0.0625, 0.03125, 4, cache_hit=False))

    view = stats.view("mlp", "1", None)
    inference = durations(view)
    assert inference["cache_miss"] == {"count": 1, "ns": 500_000_000}
    assert inference["cache_hit"] == EMPTY
    assert inference["queue"] == {"count": 1, "ns": 62_500_000}
    assert inference["compute_infer"] == {"count": 1, "ns": 31_250_000}
    assert inference["success"] == {"count": 1, "ns": 500_000_000}
    assert view["inference_count"] == 2


def test_a_cache_hit_counts_its_whole_time_and_nothing_ran() -> None:
    stats = VersionStatistics()

    stats.succeeded(0.25, 0.125, 0.0625, RunStats(5, 0.0, 0.0, 0, cache_hit=True))

    view = stats.view("mlp", "1", None)
    inference = durations(view)
    assert inference["cache_hit"] == {"count": 1, "ns": 250_000_000}
    assert inference["cache_miss"] == EMPTY
    assert inference["queue"] == EMPTY
    assert inference["compute_infer"] == EMPTY
    assert inference["success"] == {"count": 1, "ns": 250_000_000}
    assert inference["compute_input"] == {"count": 1, "ns": 125_000_000}
    assert inference["compute_output"] == {"count": 1, "ns": 62_500_000}
    assert view["inference_count"] == 5
    assert view["last_inference"] > 0


def test_hits_and_misses_of_one_version_add_up() -> None:
    stats = VersionStatistics()
    counters = VersionCounters()
    stats.succeeded(1.0, 0.0, 0.0, RunStats(1, 0.5, 0.25, 1, cache_hit=False))
    counters.executed(1, 0.0, 0.25, 0.0)
    for _ in range(3):
        stats.succeeded(0.125, 0.0, 0.0, RunStats(1, 0.0, 0.0, 0, cache_hit=True))

    view = stats.view("mlp", "1", counters)

    inference = durations(view)
    assert inference["cache_miss"] == {"count": 1, "ns": NS}
    assert inference["cache_hit"] == {"count": 3, "ns": 375_000_000}
    assert inference["success"] == {"count": 4, "ns": 1_375_000_000}
    assert inference["queue"] == {"count": 1, "ns": 500_000_000}
    assert view["inference_count"] == 4
    assert view["execution_count"] == 1


@pytest.mark.parametrize("counters", [None, VersionCounters()], ids=["not-loaded", "no-runs"])
def test_no_executions_without_runs(counters: VersionCounters | None) -> None:
    stats = VersionStatistics()
    stats.fail.add(0.5)

    view = stats.view("mlp", "7", counters)

    assert (view["name"], view["version"]) == ("mlp", "7")
    assert view["execution_count"] == 0
    assert view["batch_stats"] == []
    assert durations(view)["fail"] == {"count": 1, "ns": 500_000_000}


def test_statistics_are_kept_per_endpoint_and_version() -> None:
    statistics = Statistics()

    first = statistics.version("mlp", "1")
    first.succeeded(0.5, 0.0, 0.0, RunStats(1, 0.0, 0.0, 1))

    assert statistics.version("mlp", "1") is first
    assert statistics.version("mlp", "2") is not first
    assert statistics.version("other", "1") is not first
    assert statistics.version("mlp", "2").inference_count == 0
    assert statistics.version("mlp", "1").inference_count == 1
