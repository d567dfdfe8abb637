"""The drift monitor (monitoring/monitor.py) with real sink writers: windows closed by size and by
time, statuses, reference capture from live traffic, sampling, the per-second cap, the bounded
queue, forgetting a version, and the flush at stop."""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.support.polling import wait_for
from turnout.monitoring.features import Column
from turnout.monitoring.monitor import DriftMonitor, MonitorSettings
from turnout.monitoring.records import LEVELS, STATUS_FEATURE, DriftRecord
from turnout.monitoring.reference import reference_columns
from turnout.monitoring.sinks import GaugeSink, JsonlSink, SinkWriter

ENDPOINT = "fraud"
FAST = 1_000_000.0  # samples per second: no cap in practice
NUMERIC_STATISTICS = {
    "psi",
    "ks_statistic",
    "ks_pvalue",
    "js_distance",
    "wasserstein",
    "nan_rate",
    "out_of_range_rate",
    "status",
}


@dataclass
class Rig:
    """A monitor writing to Prometheus gauges and a JSONL file."""

    monitor: DriftMonitor
    gauges: GaugeSink
    jsonl: Path

    def records(self) -> list[DriftRecord]:
        """What reached the JSONL file (read after stop, when every line is whole)."""
        if not self.jsonl.exists():
            return []
        lines = self.jsonl.read_text("utf-8").splitlines()
        return [DriftRecord(**json.loads(line)) for line in lines]

    def status(self, version: str, feature: str = STATUS_FEATURE) -> int | None:
        return self.gauges.snapshot()[1].get((ENDPOINT, version, feature))


def make_rig(path: Path, queue_size: int = 10_000) -> Rig:
    gauges = GaugeSink()
    jsonl = path / "drift.jsonl"
    writers = [SinkWriter(gauges), SinkWriter(JsonlSink(jsonl))]
    return Rig(DriftMonitor(writers, queue_size=queue_size), gauges, jsonl)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(tmp_path)
    yield made
    made.monitor.stop(5.0)  # idempotent enough: the writers are closed a second time at worst


def reference_inputs(seed: int = 1, rows: int = 4000) -> dict[str, np.ndarray]:
    """Two numeric input features and a numeric output, all standard normal."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(rows, 2)),
        "y": rng.normal(size=rows).astype(np.float32),
    }


def settings(
    *,
    sample_rate: float = 1.0,
    max_samples_per_s: float = FAST,
    window_samples: int = 1_000_000,
    window_seconds: float = 3600.0,
    capture_reference: int = 1000,
) -> MonitorSettings:
    """Settings that close windows only when told to (by size, time or stop)."""
    return MonitorSettings(
        sample_rate=sample_rate,
        max_samples_per_s=max_samples_per_s,
        window_samples=window_samples,
        window_seconds=window_seconds,
        capture_reference=capture_reference,
    )


def offer_rows(
    monitor: DriftMonitor,
    version: str,
    data: dict[str, np.ndarray],
    rows_per_request: int = 10,
) -> None:
    """Offer ``data`` as requests of ``rows_per_request`` rows (x an input, y an output)."""
    total = len(data["x"])
    for start in range(0, total, rows_per_request):
        stop = start + rows_per_request
        monitor.offer(ENDPOINT, version, {"x": data["x"][start:stop]}, {"y": data["y"][start:stop]})


def drawn(reference: dict[str, np.ndarray], rows: int, seed: int) -> dict[str, np.ndarray]:
    """Rows drawn from the reference itself."""
    picked = np.random.default_rng(seed).choice(len(reference["x"]), rows, replace=False)
    return {name: values[picked] for name, values in reference.items()}


def windows(records: list[DriftRecord]) -> dict[float, list[DriftRecord]]:
    """The records by window (the records of one window share its end time)."""
    found: dict[float, list[DriftRecord]] = {}
    for kept in records:
        found.setdefault(kept.time, []).append(kept)
    return found


def overall(records: list[DriftRecord]) -> DriftRecord:
    (found,) = [kept for kept in records if kept.feature == STATUS_FEATURE]
    return found


# -- windows and statuses -----------------------------------------------------------------------


def test_a_window_of_reference_rows_closes_after_window_samples_and_is_ok(rig: Rig) -> None:
    reference = reference_inputs()
    rig.monitor.watch(
        ENDPOINT, "1", settings(window_samples=500), True, reference_columns(reference)
    )
    rig.monitor.start()
    offer_rows(rig.monitor, "1", drawn(reference, 500, seed=2))

    wait_for(lambda: rig.status("1") is not None, "the window's overall status gauge")
    assert rig.status("1") == LEVELS["ok"]
    counters = rig.monitor.counters()[(ENDPOINT, "1")]
    assert counters.windows == 1
    assert counters.sampled == 50
    rig.monitor.stop(5.0)

    records = rig.records()
    assert len(windows(records)) == 1  # the window was full: nothing left for stop to close
    assert {kept.window_samples for kept in records} == {500}
    assert {kept.feature for kept in records} == {"x[0]", "x[1]", "y", STATUS_FEATURE}
    for feature in ("x[0]", "x[1]", "y"):
        assert {kept.statistic for kept in records if kept.feature == feature} == (
            NUMERIC_STATISTICS
        )
    assert {kept.status for kept in records} == {"ok"}, [
        (kept.feature, kept.statistic, kept.value) for kept in records if kept.status != "ok"
    ]
    status = overall(records)
    assert (status.statistic, status.status, status.value) == ("status", "ok", 0.0)
    assert all(kept.window_start < kept.time for kept in records)


def test_shifted_inputs_alert(rig: Rig) -> None:
    reference = reference_inputs()
    rig.monitor.watch(
        ENDPOINT, "1", settings(window_samples=200), True, reference_columns(reference)
    )
    rig.monitor.start()
    live = drawn(reference, 200, seed=3)
    live["x"] = live["x"] + np.array([4.0, 0.0])  # only x[0] moves
    offer_rows(rig.monitor, "1", live)

    wait_for(lambda: rig.status("1") is not None, "the window's overall status gauge")
    assert rig.status("1") == LEVELS["alert"]
    assert rig.status("1", "x[0]") == LEVELS["alert"]
    assert rig.status("1", "x[1]") == LEVELS["ok"]
    rig.monitor.stop(5.0)

    records = rig.records()
    by_statistic = {kept.statistic: kept for kept in records if kept.feature == "x[0]"}
    assert by_statistic["psi"].status == "alert"
    assert by_statistic["out_of_range_rate"].value > 0.5
    assert by_statistic["ks_pvalue"].status == "alert"
    assert overall(records).status == "alert"
    assert overall(records).value == float(LEVELS["alert"])


def test_a_window_also_closes_after_window_seconds(rig: Rig) -> None:
    reference = reference_inputs()
    rig.monitor.watch(
        ENDPOINT, "1", settings(window_seconds=0.3), True, reference_columns(reference)
    )
    rig.monitor.start()
    offer_rows(rig.monitor, "1", drawn(reference, 50, seed=4))

    wait_for(lambda: rig.status("1") is not None, "a window closed by time", timeout_s=10.0)
    assert rig.monitor.counters()[(ENDPOINT, "1")].windows >= 1
    rig.monitor.stop(5.0)

    # However the 50 rows were split between windows, each row is in exactly one.
    found = windows(rig.records())
    assert sum(overall(records).window_samples for records in found.values()) == 50


def test_stop_closes_the_partial_final_window(rig: Rig) -> None:
    reference = reference_inputs()
    rig.monitor.watch(ENDPOINT, "1", settings(), True, reference_columns(reference))
    rig.monitor.watch(ENDPOINT, "2", settings(), True, reference_columns(reference))
    rig.monitor.start()
    offer_rows(rig.monitor, "1", drawn(reference, 30, seed=5))
    offer_rows(rig.monitor, "2", drawn(reference, 70, seed=6), rows_per_request=7)
    rig.monitor.stop(5.0)

    records = rig.records()
    for version, rows in (("1", 30), ("2", 70)):
        mine = [kept for kept in records if kept.version == version]
        assert len(windows(mine)) == 1
        assert {kept.window_samples for kept in mine} == {rows}
        assert {kept.feature for kept in mine} == {"x[0]", "x[1]", "y", STATUS_FEATURE}
        assert rig.status(version) == LEVELS[overall(mine).status]
    assert all(writer.counters.written == len(records) for writer in rig.monitor.writers)


def test_no_sampled_row_is_lost_across_windows(rig: Rig) -> None:
    reference = reference_inputs()
    rig.monitor.watch(
        ENDPOINT, "1", settings(window_samples=100), True, reference_columns(reference)
    )
    rig.monitor.start()
    offer_rows(rig.monitor, "1", drawn(reference, 350, seed=7), rows_per_request=25)
    rig.monitor.stop(5.0)

    found = windows(rig.records())
    sizes = sorted(overall(records).window_samples for records in found.values())
    assert sum(sizes) == 350
    assert sizes.count(100) == 3  # closed when full (100 rows is exactly four requests)
    assert rig.monitor.counters()[(ENDPOINT, "1")].windows == len(found)


# -- reference captured from live traffic ----------------------------------------------------


def test_the_first_capture_reference_rows_become_the_reference(rig: Rig) -> None:
    rng = np.random.default_rng(8)
    for version in ("same", "shifted"):
        rig.monitor.watch(ENDPOINT, version, settings(capture_reference=1000), True, {})
    rig.monitor.start()
    for version, shift in (("same", 0.0), ("shifted", 5.0)):
        captured = {"x": rng.normal(size=(1000, 2)), "y": rng.normal(size=1000)}
        offer_rows(rig.monitor, version, captured, rows_per_request=100)
        later = {"x": rng.normal(size=(500, 2)) + shift, "y": rng.normal(size=500)}
        offer_rows(rig.monitor, version, later, rows_per_request=100)
    rig.monitor.stop(5.0)

    records = rig.records()
    for version, status in (("same", "ok"), ("shifted", "alert")):
        mine = [kept for kept in records if kept.version == version]
        # Only the 500 rows after the capture are judged, in one window.
        assert len(windows(mine)) == 1
        assert {kept.window_samples for kept in mine} == {500}
        assert {kept.feature for kept in mine} == {"x[0]", "x[1]", "y", STATUS_FEATURE}
        assert overall(mine).status == status
    shifted = {
        kept.statistic: kept
        for kept in records
        if kept.version == "shifted" and kept.feature == "x[1]"
    }
    assert shifted["out_of_range_rate"].value > 0.9  # judged against the captured rows


def test_a_captured_categorical_reference(rig: Rig) -> None:
    rig.monitor.watch(ENDPOINT, "1", settings(capture_reference=40), True, {})
    rig.monitor.start()
    colours = np.array(["red", "green", "blue", "red"] * 10, dtype=object)
    rig.monitor.offer(ENDPOINT, "1", {"colour": colours}, {})
    rig.monitor.offer(ENDPOINT, "1", {"colour": np.array(["violet"] * 40, dtype=object)}, {})
    rig.monitor.stop(5.0)

    records = rig.records()
    by_statistic = {kept.statistic: kept for kept in records if kept.feature == "colour"}
    assert set(by_statistic) == {
        "psi",
        "chi2_statistic",
        "chi2_pvalue",
        "out_of_range_rate",
        "status",
    }
    assert by_statistic["out_of_range_rate"].value == 1.0
    assert overall(records).status == "alert"
    assert {kept.window_samples for kept in records} == {40}


def test_a_reference_file_without_the_outputs_captures_them(rig: Rig) -> None:
    # The file gives the inputs; the output y is captured from the first live rows.
    reference = reference_inputs()
    inputs_only = reference_columns({"x": reference["x"]})
    rig.monitor.watch(ENDPOINT, "1", settings(capture_reference=500), True, inputs_only)
    rig.monitor.start()
    offer_rows(rig.monitor, "1", drawn(reference, 500, seed=12), rows_per_request=50)
    later = drawn(reference, 500, seed=13)
    later["y"] = later["y"] + 6.0  # the output moves, the inputs do not
    offer_rows(rig.monitor, "1", later, rows_per_request=50)
    rig.monitor.stop(5.0)

    records = rig.records()
    assert {kept.feature for kept in records} == {"x[0]", "x[1]", "y", STATUS_FEATURE}
    y = {kept.statistic: kept for kept in records if kept.feature == "y"}
    assert y["out_of_range_rate"].value > 0.9
    assert y["status"].status == "alert"
    assert {kept.status for kept in records if kept.feature in ("x[0]", "x[1]")} == {"ok"}


def test_a_model_without_a_batch_dimension_gives_one_row_per_request(rig: Rig) -> None:
    reference = reference_inputs()
    rig.monitor.watch(ENDPOINT, "1", settings(), False, reference_columns(reference))
    rig.monitor.start()
    live = drawn(reference, 30, seed=14)
    for row in range(30):
        rig.monitor.offer(ENDPOINT, "1", {"x": live["x"][row]}, {"y": live["y"][row]})
    rig.monitor.stop(5.0)

    records = rig.records()
    assert {kept.window_samples for kept in records} == {30}
    assert {kept.feature for kept in records} == {"x[0]", "x[1]", "y", STATUS_FEATURE}


# -- sampling, the cap, the queue --------------------------------------------------------------


def one_row() -> dict[str, np.ndarray]:
    return {"x": np.zeros((1, 2))}


def test_sample_rate_samples_about_that_share(rig: Rig) -> None:
    rig.monitor.watch(ENDPOINT, "1", settings(sample_rate=0.25), True, {})
    offered = 4000
    for _ in range(offered):
        rig.monitor.offer(ENDPOINT, "1", one_row(), {})

    counters = rig.monitor.counters()[(ENDPOINT, "1")]
    assert counters.limited == 0
    assert counters.dropped == 0
    # Binomial(4000, 0.25): mean 1000, standard deviation about 27.
    assert 800 <= counters.sampled <= 1200


def test_sample_rate_one_samples_everything(rig: Rig) -> None:
    rig.monitor.watch(ENDPOINT, "1", settings(sample_rate=1.0), True, {})
    for _ in range(500):
        rig.monitor.offer(ENDPOINT, "1", one_row(), {})
    assert rig.monitor.counters()[(ENDPOINT, "1")].sampled == 500


def test_max_samples_per_s_caps_sampling(rig: Rig) -> None:
    rig.monitor.watch(ENDPOINT, "1", settings(max_samples_per_s=5.0), True, {})
    started = time.monotonic()
    for _ in range(200):
        rig.monitor.offer(ENDPOINT, "1", one_row(), {})
    elapsed = time.monotonic() - started

    counters = rig.monitor.counters()[(ENDPOINT, "1")]
    assert counters.sampled + counters.limited == 200
    assert counters.dropped == 0
    # A full bucket of 5 to start with, then 5 a second for however long the loop took.
    assert 5 <= counters.sampled <= 5 + elapsed * 5.0 + 1
    assert counters.limited > 0


def test_a_cap_below_one_sample_per_second_still_samples(rig: Rig) -> None:
    # The configuration allows any positive cap (max_samples_per_s > 0): 0.5 means one sample
    # every two seconds, not none at all.
    rig.monitor.watch(ENDPOINT, "1", settings(max_samples_per_s=0.5), True, {})

    def offered_and_sampled() -> bool:
        rig.monitor.offer(ENDPOINT, "1", one_row(), {})
        return rig.monitor.counters()[(ENDPOINT, "1")].sampled >= 1

    wait_for(offered_and_sampled, "a sample under a cap of 0.5 per second", timeout_s=3.0)


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, queue_size=5)  # never started: nothing takes from the queue
    rig.monitor.watch(ENDPOINT, "1", settings(), True, {})
    try:
        for _ in range(8):
            rig.monitor.offer(ENDPOINT, "1", one_row(), {})
        counters = rig.monitor.counters()[(ENDPOINT, "1")]
        assert (counters.sampled, counters.dropped, counters.limited) == (5, 3, 0)
    finally:
        rig.monitor.stop(1.0)


def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    gauges = GaugeSink()
    monitor = DriftMonitor([SinkWriter(gauges)], queue_size=1000, queue_bytes=10_000)
    monitor.watch(ENDPOINT, "1", settings(), True, {})
    image = np.zeros((1, 3, 16, 16), np.float32)  # 3,072 bytes: three fit, the fourth not
    try:
        for _ in range(5):
            monitor.offer(ENDPOINT, "1", {"image": image}, {})
        counters = monitor.counters()[(ENDPOINT, "1")]
        assert (counters.sampled, counters.dropped) == (3, 2)
    finally:
        monitor.stop(1.0)


def test_a_window_starts_with_its_first_sample_not_after_a_quiet_spell(rig: Rig) -> None:
    reference = reference_inputs()
    rig.monitor.watch(
        ENDPOINT, "1", settings(window_seconds=0.4), True, reference_columns(reference)
    )
    rig.monitor.start()
    time.sleep(1.0)  # quiet for longer than a window
    offer_rows(rig.monitor, "1", drawn(reference, 300, seed=6), rows_per_request=100)
    rig.monitor.stop(5.0)

    (only,) = windows(rig.records()).values()
    assert overall(only).window_samples == 300
    assert overall(only).time - overall(only).window_start < 0.4 + 0.5


def test_images_are_kept_as_channel_means(rig: Rig) -> None:
    rng = np.random.default_rng(3)
    reference = {"image": rng.normal(size=(400, 3, 8, 8)).astype(np.float32)}
    rig.monitor.watch(ENDPOINT, "1", settings(), True, reference_columns(reference))
    rig.monitor.start()
    live = rng.normal(size=(200, 3, 8, 8)).astype(np.float32)
    live[:, 1] += 5.0  # channel 1 shifted, 0 and 2 as the reference
    for start in range(0, 200, 20):
        rig.monitor.offer(ENDPOINT, "1", {"image": live[start : start + 20]}, {})
    rig.monitor.stop(5.0)

    statuses = {kept.feature: kept.status for kept in rig.records() if kept.statistic == "status"}
    assert statuses == {"image[0]": "ok", "image[1]": "alert", "image[2]": "ok", "*": "alert"}


def test_forget_stops_watching(rig: Rig) -> None:
    reference = reference_inputs()
    for version in ("1", "2"):
        rig.monitor.watch(ENDPOINT, version, settings(), True, reference_columns(reference))
    rig.monitor.start()
    rig.monitor.forget(ENDPOINT, "1")
    rig.monitor.forget(ENDPOINT, "never-watched")  # no error
    for version in ("1", "2"):
        offer_rows(rig.monitor, version, drawn(reference, 20, seed=9))

    assert set(rig.monitor.counters()) == {(ENDPOINT, "2")}
    rig.monitor.stop(5.0)
    assert {kept.version for kept in rig.records()} == {"2"}
    assert rig.status("1") is None


def test_forgetting_a_version_still_writes_its_window_in_progress(rig: Rig) -> None:
    reference = reference_inputs()
    rig.monitor.watch(ENDPOINT, "1", settings(), True, reference_columns(reference))
    rig.monitor.start()
    offer_rows(rig.monitor, "1", drawn(reference, 300, seed=4))
    rig.monitor.forget(ENDPOINT, "1")
    offer_rows(rig.monitor, "1", drawn(reference, 50, seed=5))  # after: not watched

    rig.monitor.stop(5.0)
    assert overall(rig.records()).version == "1"
    assert overall(rig.records()).window_samples == 300


def test_offer_for_an_unwatched_version_is_ignored(rig: Rig) -> None:
    rig.monitor.offer(ENDPOINT, "nobody", one_row(), {})
    assert rig.monitor.counters() == {}


# -- odd inputs --------------------------------------------------------------------------------


def test_offer_never_raises_for_odd_inputs_and_the_monitor_carries_on(rig: Rig) -> None:
    rng = np.random.default_rng(10)
    reference = {
        "x": Column(rng.normal(size=500), numeric=True),
        "label": Column(np.array(["cat", "dog"] * 250, dtype=object), numeric=False),
    }
    rig.monitor.watch(ENDPOINT, "1", settings(), True, reference)
    rig.monitor.start()
    odd: list[dict[str, np.ndarray]] = [
        {"x": np.zeros(0), "label": np.array([], dtype=object)},  # no rows
        {"x": np.zeros((0, 3))},
        {"x": np.full(4, np.nan), "label": np.array([b"cat", b"\xff\xfe", "dog", None], object)},
        {"x": np.array([np.inf, -np.inf, 1e308])},
        {"label": np.array([["cat"], ["mouse"]], dtype=object)},
        {"x": np.array(1.0)},  # no batch dimension, though the model has one
        {"unknown": np.array(["a", "b"], dtype=object)},
        {},
    ]
    for tensors in odd:
        rig.monitor.offer(ENDPOINT, "1", tensors, {})
        rig.monitor.offer(ENDPOINT, "1", {}, tensors)
    rig.monitor.offer(
        ENDPOINT, "1", {"x": rng.normal(size=20)}, {"label": reference["label"].values[:20]}
    )
    rig.monitor.stop(5.0)

    records = rig.records()
    assert records, "no window was written after the odd inputs"
    assert len(windows(records)) == 1
    assert {"x", "label", STATUS_FEATURE} <= {kept.feature for kept in records}
    by_statistic = {kept.statistic: kept for kept in records if kept.feature == "x"}
    assert by_statistic["nan_rate"].value > 0  # the NaN rows were counted, not lost


def test_a_value_the_reference_cannot_compare_does_not_stall_the_version(rig: Rig) -> None:
    # A numeric reference (e.g. a CSV column whose values all parse as numbers) and live text
    # that does not: the window holding it cannot be compared. The version must not stop
    # producing windows for good, and stop() must still flush the other versions.
    rng = np.random.default_rng(11)
    reference = {"code": Column(rng.normal(size=500), numeric=True)}
    for version in ("1", "2"):
        rig.monitor.watch(ENDPOINT, version, settings(window_samples=20), True, reference)
    rig.monitor.start()
    rig.monitor.offer(ENDPOINT, "1", {"code": np.array(["A17"] * 20, dtype=object)}, {})
    for _ in range(3):
        rig.monitor.offer(ENDPOINT, "1", {"code": rng.normal(size=20)}, {})
    rig.monitor.offer(ENDPOINT, "2", {"code": rng.normal(size=5)}, {})
    rig.monitor.stop(5.0)

    records = rig.records()
    mine = [kept for kept in records if kept.version == "1"]
    assert len(windows(mine)) >= 3, "version 1 stopped producing windows after one bad value"
    assert [kept for kept in records if kept.version == "2"], "version 2's final window was lost"
