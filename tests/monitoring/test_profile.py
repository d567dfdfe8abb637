"""Reference profiles and windows compared with them (monitoring/profile.py), and how values
become statuses (monitoring/records.py).

Every sample is drawn from a generator with a fixed seed, so each test sees the same numbers
every run; the margins are wide (a same-distribution window's PSI is about 0.01 against a warn
level of 0.1; a one-sd shift's is above 0.5 against an alert level of 0.25)."""

import math

import numpy as np
import pytest

from turnout.monitoring.features import Column
from turnout.monitoring.profile import (
    REFERENCE_SAMPLE,
    TOP_CATEGORIES,
    CategoricalReference,
    FeatureDrift,
    NumericReference,
    compare,
    reference_of,
)
from turnout.monitoring.records import (
    DEFAULT_BOUNDS,
    DEFAULT_MIN_WINDOW,
    Bound,
    Status,
    Thresholds,
    worst,
)
from turnout.monitoring.statistics import bin_counts, js_distance, ks_two_sample, psi, wasserstein

WINDOW = 1000
THRESHOLDS = Thresholds(DEFAULT_BOUNDS)
NUMERIC_STATISTICS = {
    "psi",
    "ks_statistic",
    "ks_pvalue",
    "js_distance",
    "wasserstein",
    "nan_rate",
    "out_of_range_rate",
}
CATEGORICAL_STATISTICS = {"psi", "chi2_statistic", "chi2_pvalue", "out_of_range_rate"}


def numeric(values: np.ndarray) -> Column:
    return Column(np.asarray(values, dtype=np.float64), numeric=True)


def categorical(values: list[str]) -> Column:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return Column(array, numeric=False)


def normal_reference(seed: int = 1, size: int = 20_000) -> NumericReference:
    rng = np.random.default_rng(seed)
    profile = reference_of(numeric(rng.normal(0.0, 1.0, size)), rng)
    assert isinstance(profile, NumericReference)
    return profile


def draw_categories(
    rng: np.random.Generator, names: list[str], shares: list[float], size: int
) -> list[str]:
    return [str(name) for name in rng.choice(names, size=size, p=shares)]


# -- reference_of ----------------------------------------------------------------------------


def test_numeric_reference_profile() -> None:
    values = np.arange(1000, dtype=np.float64)[::-1]
    profile = reference_of(numeric(values), np.random.default_rng(0))
    assert isinstance(profile, NumericReference)
    assert profile.sample.tolist() == sorted(values.tolist())
    assert len(profile.edges) == 9
    assert profile.counts.tolist() == [100] * 10
    assert (profile.low, profile.high) == (0.0, 999.0)


def test_numeric_reference_drops_non_finite_values() -> None:
    values = np.array([np.nan, 1.0, np.inf, 2.0, -np.inf, 3.0])
    profile = reference_of(numeric(values), np.random.default_rng(0))
    assert isinstance(profile, NumericReference)
    assert profile.sample.tolist() == [1.0, 2.0, 3.0]
    assert int(profile.counts.sum()) == 3
    assert (profile.low, profile.high) == (1.0, 3.0)


def test_numeric_reference_keeps_a_sample() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=3 * REFERENCE_SAMPLE)
    profile = reference_of(numeric(values), rng)
    assert isinstance(profile, NumericReference)
    assert len(profile.sample) == REFERENCE_SAMPLE
    assert np.all(np.diff(profile.sample) >= 0)
    assert np.isin(profile.sample, values).all()
    assert int(profile.counts.sum()) == REFERENCE_SAMPLE


def test_numeric_reference_of_nothing_finite() -> None:
    profile = reference_of(numeric(np.array([np.nan, np.nan])), np.random.default_rng(0))
    assert isinstance(profile, NumericReference)
    assert len(profile.sample) == 0
    assert (profile.low, profile.high) == (0.0, 0.0)


def test_categorical_reference_profile() -> None:
    profile = reference_of(categorical(["b", "a", "b", "c", "b", "a"]), np.random.default_rng(0))
    assert isinstance(profile, CategoricalReference)
    assert profile.categories == ("b", "a", "c")
    assert profile.counts.tolist() == [3, 2, 1, 0]  # the last count pools the rest: none here


def test_categorical_reference_pools_beyond_the_top_categories() -> None:
    values = [f"c{index}" for index in range(TOP_CATEGORIES + 5) for _ in range(index + 1)]
    profile = reference_of(categorical(values), np.random.default_rng(0))
    assert isinstance(profile, CategoricalReference)
    assert len(profile.categories) == TOP_CATEGORIES
    assert profile.categories[0] == f"c{TOP_CATEGORIES + 4}"  # the most common first
    assert int(profile.counts[-1]) == sum(range(1, 6))  # c0..c4 have 1..5 values each
    assert int(profile.counts.sum()) == len(values)


# -- numeric windows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "distribution",
    ["normal", "lognormal", "uniform", "exponential"],
)
def test_same_distribution_stays_ok(distribution: str) -> None:
    rng = np.random.default_rng(11)

    def draw(size: int) -> np.ndarray:
        if distribution == "normal":
            return rng.normal(3.0, 2.0, size)
        if distribution == "lognormal":
            return rng.lognormal(0.0, 0.7, size)
        if distribution == "uniform":
            return rng.uniform(-5.0, 5.0, size)
        return rng.exponential(2.0, size)

    profile = reference_of(numeric(draw(20_000)), rng)
    for _ in range(3):
        drift = compare(profile, numeric(draw(WINDOW)), THRESHOLDS)
        assert set(drift.values) == NUMERIC_STATISTICS
        assert drift.statuses == dict.fromkeys(NUMERIC_STATISTICS, "ok"), drift.values
        assert drift.status == "ok"
        assert drift.values["psi"] < 0.05
        assert drift.values["ks_pvalue"] > 0.01
        assert drift.values["nan_rate"] == 0.0
        assert drift.values["out_of_range_rate"] < 0.01


def test_a_one_sd_shift_alerts() -> None:
    profile = normal_reference()
    live = np.random.default_rng(7).normal(1.0, 1.0, WINDOW)
    drift = compare(profile, numeric(live), THRESHOLDS)
    assert drift.values["psi"] > 0.5
    assert drift.statuses["psi"] == "alert"
    assert drift.values["ks_pvalue"] < 1e-20
    assert drift.statuses["ks_pvalue"] == "alert"
    assert drift.values["ks_statistic"] == pytest.approx(0.38, abs=0.05)  # Phi(0.5) - Phi(-0.5)
    assert drift.values["wasserstein"] == pytest.approx(1.0, abs=0.1)
    assert drift.status == "alert"


def test_a_small_shift_warns_on_psi() -> None:
    profile = normal_reference()
    live = np.random.default_rng(8).normal(0.5, 1.0, 10 * WINDOW)
    drift = compare(profile, numeric(live), THRESHOLDS)
    # a half-sd shift: PSI about 0.25 in theory on deciles; between the warn and alert levels
    # or just over, and the KS test sees it either way
    assert drift.values["psi"] > 0.1
    assert drift.statuses["psi"] in {"warn", "alert"}
    assert drift.statuses["ks_pvalue"] == "alert"


def test_the_statistics_agree_with_their_functions() -> None:
    profile = normal_reference()
    live = np.random.default_rng(9).normal(0.3, 1.2, WINDOW)
    drift = compare(profile, numeric(live), THRESHOLDS)
    counts = bin_counts(live, profile.edges)
    assert drift.values["psi"] == psi(profile.counts, counts)
    assert drift.values["js_distance"] == js_distance(profile.counts, counts)
    assert drift.values["ks_statistic"] == ks_two_sample(profile.sample, live).statistic
    assert drift.values["ks_pvalue"] == ks_two_sample(profile.sample, live).p_value
    assert drift.values["wasserstein"] == wasserstein(profile.sample, live)


@pytest.mark.parametrize(
    ("bad", "status"),
    [(0, "ok"), (5, "ok"), (10, "warn"), (30, "warn"), (50, "alert"), (200, "alert")],
)
def test_nan_rate(bad: int, status: Status) -> None:
    """NaN and inf both count as missing (nan_rate = non-finite / window); warn at 1%, alert at
    5%."""
    profile = normal_reference()
    live = np.random.default_rng(10).normal(0.0, 1.0, WINDOW)
    live[:bad:2] = np.nan
    live[1:bad:2] = np.inf
    drift = compare(profile, numeric(live), THRESHOLDS)
    assert drift.values["nan_rate"] == pytest.approx(bad / WINDOW)
    assert drift.statuses["nan_rate"] == status
    # the rest are measured on the finite values alone: no nan or inf leaks into them
    for name in NUMERIC_STATISTICS:
        assert math.isfinite(drift.values[name]), name
    assert drift.statuses["psi"] == "ok"


def test_non_finite_values_do_not_count_in_the_distribution() -> None:
    profile = normal_reference()
    live = np.random.default_rng(12).normal(0.0, 1.0, WINDOW)
    with_nan = np.concatenate([live, [np.nan] * 10, [-np.inf] * 10])
    clean = compare(profile, numeric(live), THRESHOLDS)
    dirty = compare(profile, numeric(with_nan), THRESHOLDS)
    for name in ("psi", "ks_statistic", "ks_pvalue", "js_distance", "wasserstein"):
        assert dirty.values[name] == clean.values[name], name
    assert dirty.values["nan_rate"] == pytest.approx(20 / 1020)


def test_a_window_of_nothing_finite() -> None:
    drift = compare(normal_reference(), numeric(np.full(WINDOW, np.nan)), THRESHOLDS)
    assert drift.values["nan_rate"] == 1.0
    assert drift.statuses["nan_rate"] == "alert"
    assert drift.values["out_of_range_rate"] == 0.0
    undefined = {"psi", "ks_statistic", "ks_pvalue", "js_distance", "wasserstein"}
    for name, value in drift.values.items():
        assert math.isnan(value) == (name in undefined), name
        assert name not in undefined or drift.statuses[name] == "ok"


@pytest.mark.parametrize(
    ("outside", "status"),
    [(0, "ok"), (40, "ok"), (50, "warn"), (150, "warn"), (200, "alert"), (600, "alert")],
)
def test_out_of_range_rate(outside: int, status: Status) -> None:
    """Values below the reference's minimum or above its maximum; warn at 5%, alert at 20%."""
    profile = reference_of(numeric(np.linspace(-1.0, 1.0, 2001)), np.random.default_rng(0))
    live = np.random.default_rng(13).uniform(-1.0, 1.0, WINDOW)
    live[:outside:2] = 5.0
    live[1:outside:2] = -1.0001
    live[outside] = 1.0  # the range's ends are inside it
    live[outside + 1] = -1.0
    drift = compare(profile, numeric(live), THRESHOLDS)
    assert drift.values["out_of_range_rate"] == pytest.approx(outside / WINDOW)
    assert drift.statuses["out_of_range_rate"] == status


def test_out_of_range_rate_is_of_the_whole_window() -> None:
    profile = reference_of(numeric(np.linspace(0.0, 1.0, 101)), np.random.default_rng(0))
    live = np.array([0.5] * 80 + [2.0] * 10 + [np.nan] * 10)
    drift = compare(profile, numeric(live), THRESHOLDS)
    assert drift.values["out_of_range_rate"] == pytest.approx(0.1)
    assert drift.values["nan_rate"] == pytest.approx(0.1)


def test_identical_window_is_no_drift() -> None:
    values = np.random.default_rng(14).normal(size=WINDOW)
    profile = reference_of(numeric(values), np.random.default_rng(0))
    drift = compare(profile, numeric(values), THRESHOLDS)
    assert drift.values["psi"] == 0.0
    assert drift.values["ks_statistic"] == 0.0
    assert drift.values["ks_pvalue"] == 1.0
    assert drift.values["js_distance"] == pytest.approx(0.0, abs=1e-7)
    assert drift.values["wasserstein"] == 0.0
    assert drift.status == "ok"


def test_p_values_are_not_judged_on_a_small_window() -> None:
    """Below min_window only the rates are judged: the distribution statistics (p-values and
    PSI alike) are computed but left ok."""
    profile = normal_reference()
    small = np.random.default_rng(15).normal(5.0, 1.0, DEFAULT_MIN_WINDOW - 1)
    small[:10] = np.nan
    drift = compare(profile, numeric(small), THRESHOLDS)
    assert drift.values["ks_pvalue"] < 1e-10
    assert drift.statuses["ks_pvalue"] == "ok"
    assert drift.values["psi"] > 1.0
    assert drift.statuses["psi"] == "ok"
    assert drift.statuses["nan_rate"] == "alert"  # 10 of 99: rates are judged at any size
    assert drift.statuses["out_of_range_rate"] == "alert"  # 5 sd up: most above the max
    at_minimum = np.random.default_rng(15).normal(5.0, 1.0, DEFAULT_MIN_WINDOW)
    judged = compare(profile, numeric(at_minimum), THRESHOLDS)
    assert judged.statuses["ks_pvalue"] == "alert"
    assert judged.statuses["psi"] == "alert"


def test_min_window_is_the_thresholds_own() -> None:
    profile = normal_reference()
    live = np.random.default_rng(16).normal(3.0, 1.0, 50)
    assert compare(profile, numeric(live), Thresholds(DEFAULT_BOUNDS, min_window=20)).statuses[
        "ks_pvalue"
    ] == ("alert")
    assert compare(profile, numeric(live), Thresholds(DEFAULT_BOUNDS, min_window=51)).statuses[
        "ks_pvalue"
    ] == ("ok")


def test_the_window_counts_non_finite_values_toward_min_window() -> None:
    """The window's size is every value it holds; the KS test runs on its finite ones."""
    profile = normal_reference()
    live = np.concatenate([np.random.default_rng(17).normal(3.0, 1.0, 60), [np.nan] * 40])
    drift = compare(profile, numeric(live), THRESHOLDS)
    assert drift.statuses["ks_pvalue"] == "alert"


# -- categorical windows ---------------------------------------------------------------------

NAMES = ["red", "green", "blue"]
SHARES = [0.5, 0.3, 0.2]


def colour_reference(seed: int = 20) -> CategoricalReference:
    rng = np.random.default_rng(seed)
    profile = reference_of(categorical(draw_categories(rng, NAMES, SHARES, 10_000)), rng)
    assert isinstance(profile, CategoricalReference)
    return profile


def test_same_category_mix_stays_ok() -> None:
    profile = colour_reference()
    rng = np.random.default_rng(21)
    for _ in range(3):
        live = categorical(draw_categories(rng, NAMES, SHARES, WINDOW))
        drift = compare(profile, live, THRESHOLDS)
        assert set(drift.values) == CATEGORICAL_STATISTICS
        assert drift.statuses == dict.fromkeys(CATEGORICAL_STATISTICS, "ok"), drift.values
        assert drift.values["psi"] < 0.02
        assert drift.values["out_of_range_rate"] == 0.0


def test_changed_category_mix_alerts() -> None:
    profile = colour_reference()
    live = categorical(draw_categories(np.random.default_rng(22), NAMES, [0.2, 0.3, 0.5], WINDOW))
    drift = compare(profile, live, THRESHOLDS)
    # PSI = (0.2 - 0.5) ln(0.2 / 0.5) + 0 + (0.5 - 0.2) ln(0.5 / 0.2) = 0.6 ln 2.5 = 0.55
    assert drift.values["psi"] == pytest.approx(0.6 * math.log(2.5), abs=0.1)
    assert drift.statuses["psi"] == "alert"
    assert drift.values["chi2_pvalue"] < 1e-20
    assert drift.statuses["chi2_pvalue"] == "alert"
    assert drift.statuses["chi2_statistic"] == "ok"  # no bound: the p-value is judged
    assert drift.status == "alert"


def test_unseen_categories_are_out_of_range() -> None:
    profile = colour_reference()
    rng = np.random.default_rng(23)
    live = draw_categories(rng, NAMES, SHARES, 900) + ["purple"] * 100
    drift = compare(profile, categorical(live), THRESHOLDS)
    assert drift.values["out_of_range_rate"] == pytest.approx(0.1)
    assert drift.statuses["out_of_range_rate"] == "warn"
    # The known categories keep their mix: the goodness of fit over them has nothing to say.
    assert drift.statuses["chi2_pvalue"] == "ok"
    assert math.isfinite(drift.values["chi2_statistic"])
    # PSI, over the reference's categories and "other", sees a tenth of the rows appear there.
    assert drift.statuses["psi"] == "alert"


def test_a_category_mix_shift_of_a_boolean_feature_alerts() -> None:
    """Two categories, one degree of freedom: 54.5/45.5 against 50/50 over 1000 rows is
    p = 0.0044 (scipy.stats.chisquare), an alert at 0.01."""
    profile = reference_of(
        Column(np.array(["True", "False"] * 5000, dtype=object), numeric=False),
        np.random.default_rng(0),
    )
    live = Column(np.array(["True"] * 545 + ["False"] * 455, dtype=object), numeric=False)
    drift = compare(profile, live, THRESHOLDS)
    assert drift.values["chi2_pvalue"] == pytest.approx(0.0044, abs=2e-4)
    assert drift.statuses["chi2_pvalue"] == "alert"


def test_categories_are_compared_as_text() -> None:
    """Integer categories from a reference and from a window meet as their text."""
    profile = reference_of(
        Column(np.array([1, 2, 2, 3] * 100, dtype=np.int64), numeric=False),
        np.random.default_rng(0),
    )
    assert isinstance(profile, CategoricalReference)
    assert set(profile.categories) == {"1", "2", "3"}
    live = Column(np.array([1, 2, 2, 3] * 50, dtype=np.int32), numeric=False)
    drift = compare(profile, live, THRESHOLDS)
    assert drift.values["psi"] == pytest.approx(0.0, abs=1e-12)
    assert drift.values["out_of_range_rate"] == 0.0


def test_chi2_pvalue_not_judged_on_a_small_window() -> None:
    profile = colour_reference()
    live = categorical(["blue"] * 60 + ["purple"] * 10)
    drift = compare(profile, live, THRESHOLDS)
    assert drift.values["chi2_pvalue"] < 1e-10
    assert drift.statuses["chi2_pvalue"] == "ok"
    assert drift.statuses["psi"] == "ok"
    assert drift.values["out_of_range_rate"] == pytest.approx(10 / 70)
    assert drift.statuses["out_of_range_rate"] == "warn"


def test_many_categories_from_the_same_distribution_stay_ok() -> None:
    """More categories than TOP_CATEGORIES: the pooled rest are categories the reference holds,
    so a window drawn from the reference's own distribution is not out of range."""
    rng = np.random.default_rng(24)
    names = [f"id{index}" for index in range(2 * TOP_CATEGORIES)]
    shares = [1 / len(names)] * len(names)
    profile = reference_of(categorical(draw_categories(rng, names, shares, 20_000)), rng)
    drift = compare(profile, categorical(draw_categories(rng, names, shares, WINDOW)), THRESHOLDS)
    assert drift.statuses["psi"] == "ok"
    assert drift.statuses["chi2_pvalue"] == "ok"
    assert drift.values["out_of_range_rate"] < 0.05
    assert drift.status == "ok"


# -- records: Bound, Thresholds, worst -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status"),
    [(0.0, "ok"), (0.0999, "ok"), (0.1, "warn"), (0.2, "warn"), (0.25, "alert"), (9.0, "alert")],
)
def test_bound_higher_is_worse(value: float, status: Status) -> None:
    assert Bound(warn=0.1, alert=0.25).status(value) == status


@pytest.mark.parametrize(
    ("value", "status"),
    [(1.0, "ok"), (0.0501, "ok"), (0.05, "warn"), (0.02, "warn"), (0.01, "alert"), (0.0, "alert")],
)
def test_bound_lower_is_worse(value: float, status: Status) -> None:
    assert Bound(warn=0.05, alert=0.01, lower_is_worse=True).status(value) == status


def test_bound_levels_left_out_are_not_used() -> None:
    alert_only = Bound(alert=0.01, lower_is_worse=True)
    assert [alert_only.status(value) for value in (0.5, 0.02, 0.01, 0.001)] == [
        "ok",
        "ok",
        "alert",
        "alert",
    ]
    warn_only = Bound(warn=1.0)
    assert [warn_only.status(value) for value in (0.5, 1.0, 1e9)] == ["ok", "warn", "warn"]
    assert [Bound().status(value) for value in (-1e9, 0.0, 1e9)] == ["ok", "ok", "ok"]


def test_default_bounds() -> None:
    assert DEFAULT_BOUNDS["ks_pvalue"].lower_is_worse
    assert DEFAULT_BOUNDS["chi2_pvalue"].lower_is_worse
    assert not DEFAULT_BOUNDS["psi"].lower_is_worse
    assert DEFAULT_BOUNDS["ks_pvalue"].warn is None
    assert "wasserstein" not in DEFAULT_BOUNDS  # not judged: its scale is the feature's own


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("statistic", ["psi", "ks_pvalue", "nan_rate"])
def test_thresholds_non_finite_is_ok(statistic: str, value: float) -> None:
    assert THRESHOLDS.status(statistic, value, WINDOW) == "ok"


def test_thresholds_unbounded_statistic_is_ok() -> None:
    assert THRESHOLDS.status("wasserstein", 1e9, WINDOW) == "ok"
    assert THRESHOLDS.status("ks_statistic", 1.0, WINDOW) == "ok"


def test_thresholds_judge_p_values_from_min_window() -> None:
    thresholds = Thresholds(DEFAULT_BOUNDS, min_window=100)
    assert thresholds.status("ks_pvalue", 0.0, 99) == "ok"
    assert thresholds.status("ks_pvalue", 0.0, 100) == "alert"
    assert thresholds.status("chi2_pvalue", 0.0, 99) == "ok"
    assert thresholds.status("chi2_pvalue", 0.0, 100) == "alert"
    assert thresholds.status("psi", 0.3, 99) == "ok"  # a distribution statistic: not yet
    assert thresholds.status("psi", 0.3, 100) == "alert"
    assert thresholds.status("nan_rate", 0.02, 1) == "warn"  # a rate: any window
    assert thresholds.status("out_of_range_rate", 0.5, 1) == "alert"


@pytest.mark.parametrize(
    ("p_value", "tests", "status"),
    [
        (0.004, 1, "alert"),
        (0.004, 2, "alert"),
        (0.004, 3, "ok"),
        (0.01, 1, "alert"),
        (0.0051, 2, "ok"),
        (0.0005, 20, "alert"),
        (0.004, 0, "alert"),
    ],
)
def test_p_values_are_bonferroni_corrected(p_value: float, tests: int, status: Status) -> None:
    """A p-value of one of ``tests`` features is judged as p * tests (capped at 1)."""
    assert THRESHOLDS.status("ks_pvalue", p_value, WINDOW, tests) == status
    assert THRESHOLDS.status("chi2_pvalue", p_value, WINDOW, tests) == status


def test_correction_can_be_turned_off() -> None:
    plain = Thresholds(DEFAULT_BOUNDS, correct_p_values=False)
    assert plain.status("ks_pvalue", 0.004, WINDOW, tests=100) == "alert"
    assert THRESHOLDS.status("ks_pvalue", 0.004, WINDOW, tests=100) == "ok"


def test_correction_is_for_p_values_only() -> None:
    assert THRESHOLDS.status("psi", 0.3, WINDOW, tests=100) == "alert"
    assert THRESHOLDS.status("nan_rate", 0.02, WINDOW, tests=100) == "warn"


def test_compare_passes_the_number_of_tests() -> None:
    profile = normal_reference()
    live = np.random.default_rng(18).normal(0.15, 1.0, WINDOW)
    alone = compare(profile, numeric(live), THRESHOLDS)
    p_value = alone.values["ks_pvalue"]
    assert 1e-4 < p_value < 0.01  # a small shift: significant alone, not among many
    assert alone.statuses["ks_pvalue"] == "alert"
    many = compare(profile, numeric(live), THRESHOLDS, tests=math.ceil(0.01 / p_value) + 1)
    assert many.values["ks_pvalue"] == p_value  # the value reported is the raw p-value
    assert many.statuses["ks_pvalue"] == "ok"


def test_worst() -> None:
    assert worst([]) == "ok"
    assert worst(["ok", "ok"]) == "ok"
    assert worst(["ok", "warn", "ok"]) == "warn"
    assert worst(["warn", "alert", "ok"]) == "alert"
    statuses: list[Status] = ["alert", "warn"]
    assert worst(iter(statuses)) == "alert"  # any iterable, read once


def test_feature_drift_status_is_the_worst() -> None:
    drift = FeatureDrift({"a": 0.0, "b": 0.0}, {"a": "warn", "b": "ok"})
    assert drift.status == "warn"
    assert FeatureDrift({}, {}).status == "ok"
