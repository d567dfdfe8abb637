"""How the load test's parent adds up the seconds its processes hand over, and the figures it
reports: exact sums across processes, late answers, requests that were never sent."""

import pytest

from turnout.loadtests.clients import Outcome
from turnout.loadtests.generator import Recorder, Tally
from turnout.loadtests.loadtest import LATE_S, _figures, _Timeline


def _recorded(latencies_ms: dict[int, list[float]], version: str = "1") -> Recorder:
    recorder = Recorder()
    for second, values in latencies_ms.items():
        for value in values:
            recorder.add("main", second, "mlp", Outcome(True, "OK", version), value * 1000)
    return recorder


def test_seconds_from_two_processes_add_up_exactly() -> None:
    first = _recorded({0: [1.0, 2.0], 1: [3.0]})
    second = _recorded({0: [4.0], 1: [5.0, 6.0]}, version="2")
    timeline = _Timeline(2)
    timeline.add(0, 2, first.hand_over(2))
    timeline.add(1, 2, second.hand_over(2))

    zero, one = timeline.entries(2.0)
    assert (zero["requests"], one["requests"]) == (3, 3)
    assert zero["versions"] == {"mlp/1": 2, "mlp/2": 1}
    assert zero["latency_ms"]["max"] == 4.0
    assert one["latency_ms"]["p50"] == pytest_approx(5.0)
    assert first.seconds == {}
    assert second.seconds == {}


def pytest_approx(value: float) -> object:
    return pytest.approx(value, rel=1 / 1000)


def test_a_second_is_shown_once_every_process_has_handed_it_over() -> None:
    timeline = _Timeline(2)
    assert timeline.add(0, 1, _recorded({0: [1.0]}).hand_over(1)) is None
    assert timeline.add(1, 1, _recorded({0: [2.0]}).hand_over(1)) == 0


def test_a_late_answer_joins_its_second_and_old_seconds_are_cut_to_figures() -> None:
    timeline = _Timeline(1)
    timeline.add(0, 1, _recorded({0: [1.0]}).hand_over(1))
    timeline.add(0, 2, _recorded({0: [9.0], 1: [2.0]}).hand_over(2))  # 9 ms: late to second 0
    assert timeline.entries(2.0)[0]["requests"] == 2
    assert timeline.entries(2.0)[0]["latency_ms"]["max"] == 9.0

    timeline.add(0, LATE_S + 3, {})
    assert 0 in timeline.closed
    assert 0 not in timeline.open
    timeline.add(0, LATE_S + 3, _recorded({0: [1.0]}).hand_over(1))  # later than any call
    assert timeline.entries(2.0)[0]["requests"] == 3


def test_requests_never_sent_count_as_errors_but_not_as_requests() -> None:
    recorder = _recorded({0: [1.0] * 8})
    recorder.not_sent("main", 0)
    recorder.not_sent("main", 0)
    tally = recorder.phases["main"]
    figures = _figures(tally, 1.0)
    assert (figures["requests"], figures["not_sent"]) == (8, 2)
    assert figures["throughput_rps"] == 8.0
    assert figures["error_rate"] == 0.2
    assert figures["latency_ms"]["p50"] == pytest_approx(1.0)
    assert Tally.from_dict(tally.to_dict()).not_sent == 2


def test_success_latency_leaves_out_the_errors_and_merges_across_processes() -> None:
    first = Tally()
    first.add("mlp", Outcome(True, "OK", "1"), 2_000.0)
    first.add("mlp", Outcome(False, "RESOURCE_EXHAUSTED"), 90_000.0)
    second = Tally.from_dict(first.to_dict())
    second.add("mlp", Outcome(True, "OK", "2"), 4_000.0)
    first.merge(second)

    figures = _figures(first, 1.0)
    assert figures["requests"] == 5
    assert figures["errors"] == {"RESOURCE_EXHAUSTED": 2}
    assert figures["latency_ms"]["max"] == pytest.approx(90.0, rel=1e-3)
    assert figures["success_latency_ms"]["max"] == pytest.approx(4.0, rel=1e-3)
    assert figures["success_latency_ms"]["p50"] == pytest.approx(2.0, rel=1e-3)
