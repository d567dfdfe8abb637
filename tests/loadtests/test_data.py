"""The rows a load test sends (loadtests/data.py): the demo's reference set for an input shaped
like the demo model's, random rows shaped and typed by the server's metadata, .npz files checked
against the model's inputs, drift injected exactly as configured, and rows cut into requests."""

from pathlib import Path

import numpy as np
import pytest

from turnout.loadtests.clients import InputSpec, UsageError
from turnout.loadtests.data import (
    CATEGORIES,
    MAX_REQUESTS,
    RANDOM_ROWS,
    Rows,
    load_rows,
    requests,
    with_drift,
)
from turnout.loadtests.scenario import DriftConfig
from turnout.server.demo import FEATURES, REFERENCE_ROWS, REFERENCE_SEED, reference_inputs

DEMO_INPUT = InputSpec("INPUT0", "FP32", (-1, FEATURES))


def _reference() -> Rows:
    return {"INPUT0": reference_inputs(seed=REFERENCE_SEED)}


# --- load_rows ------------------------------------------------------------------------------------


def test_the_demo_models_input_gets_the_demo_reference_set() -> None:
    rows = load_rows([DEMO_INPUT], None)
    assert list(rows) == ["INPUT0"]
    assert rows["INPUT0"].dtype == np.float32
    assert rows["INPUT0"].shape == (REFERENCE_ROWS, FEATURES)
    # the very rows `turnout demo` writes as the drift reference: no drift by construction
    np.testing.assert_array_equal(rows["INPUT0"], reference_inputs(seed=REFERENCE_SEED))


@pytest.mark.parametrize(
    "spec",
    [
        InputSpec("INPUT0", "FP64", (-1, FEATURES)),
        InputSpec("INPUT0", "FP32", (-1, FEATURES + 1)),
        InputSpec("INPUT0", "FP32", (FEATURES,)),
    ],
    ids=["fp64", "wider", "no-batch"],
)
def test_other_inputs_get_random_rows_not_the_reference(spec: InputSpec) -> None:
    rows = load_rows([spec], None)
    assert len(rows["INPUT0"]) == RANDOM_ROWS


def test_random_rows_follow_the_metadata() -> None:
    specs = [
        InputSpec("image", "FP16", (-1, 3, -1, 2)),
        InputSpec("category", "INT64", (-1,)),
        InputSpec("count", "UINT8", (-1, 4)),
        InputSpec("flags", "BOOL", (5,)),  # no batch dimension: the whole shape is a row
    ]
    rows = load_rows(specs, None)
    assert list(rows) == ["image", "category", "count", "flags"]
    # the batch dimension becomes the rows; other dynamic sizes become 1
    assert rows["image"].shape == (RANDOM_ROWS, 3, 1, 2)
    assert rows["image"].dtype == np.float16
    assert rows["category"].shape == (RANDOM_ROWS,)
    assert rows["category"].dtype == np.int64
    assert rows["count"].shape == (RANDOM_ROWS, 4)
    assert rows["count"].dtype == np.uint8
    assert rows["flags"].shape == (RANDOM_ROWS, 5)
    assert rows["flags"].dtype == np.bool_
    for name in ("category", "count"):
        assert set(np.unique(rows[name])) <= set(range(CATEGORIES)), name
        assert len(np.unique(rows[name])) > 1, name
    assert 0.3 < rows["flags"].mean() < 0.7
    assert abs(float(rows["image"].astype(np.float64).mean())) < 0.1
    # seeded: the same every time
    again = load_rows(specs, None)
    for name, array in rows.items():
        np.testing.assert_array_equal(array, again[name])


def test_bytes_inputs_need_a_data_set() -> None:
    with pytest.raises(UsageError, match="BYTES"):
        load_rows([InputSpec("text", "BYTES", (-1,))], None)


def test_rows_from_a_file_are_cast_to_the_models_datatype(tmp_path: Path) -> None:
    path = tmp_path / "rows.npz"
    values = np.arange(12 * FEATURES, dtype=np.float64).reshape(12, FEATURES)
    labels = np.arange(12, dtype=np.int32)
    np.savez(path, INPUT0=values, LABELS=labels, ignored=np.zeros(3))
    rows = load_rows([DEMO_INPUT, InputSpec("LABELS", "INT64", (-1,))], path)
    assert sorted(rows) == ["INPUT0", "LABELS"]
    assert rows["INPUT0"].dtype == np.float32
    np.testing.assert_array_equal(rows["INPUT0"], values.astype(np.float32))
    assert rows["LABELS"].dtype == np.int64
    np.testing.assert_array_equal(rows["LABELS"], labels)


def test_a_file_may_fill_dynamic_sizes(tmp_path: Path) -> None:
    path = tmp_path / "rows.npz"
    np.savez(path, x=np.ones((6, 3, 7), np.float32))
    rows = load_rows([InputSpec("x", "FP32", (-1, 3, -1))], path)
    assert rows["x"].shape == (6, 3, 7)


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        pytest.param(
            {"INPUT0": np.zeros((10, FEATURES + 1), np.float32)},
            "INPUT0 has rows of shape [65], the model takes [64]",
            id="wrong-width",
        ),
        pytest.param(
            {"INPUT0": np.zeros((10,), np.float32)},
            "INPUT0 has rows of shape [], the model takes [64]",
            id="missing-axis",
        ),
        pytest.param(
            {"INPUT0": np.zeros((10, 8, 8), np.float32)},
            "INPUT0 has rows of shape [8, 8], the model takes [64]",
            id="extra-axis",
        ),
        pytest.param({"other": np.zeros((10, FEATURES))}, "no array for input INPUT0", id="absent"),
    ],
)
def test_a_file_that_does_not_fit_the_model_is_a_usage_error(
    tmp_path: Path, arrays: dict[str, np.ndarray], says: str
) -> None:
    path = tmp_path / "rows.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(UsageError) as raised:
        load_rows([DEMO_INPUT], path)
    assert str(raised.value) == f"{path}: {says}"


def test_inputs_of_a_file_must_have_as_many_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.npz"
    np.savez(path, a=np.zeros((5, 2), np.float32), b=np.zeros((6, 2), np.float32))
    specs = [InputSpec("a", "FP32", (-1, 2)), InputSpec("b", "FP32", (-1, 2))]
    with pytest.raises(UsageError, match="the same number of rows"):
        load_rows(specs, path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a zip file", id="text"),
        # numpy (2.4) drops the file it opened unclosed when the zip directory is unreadable;
        # CPython closes it at once, with a ResourceWarning that is numpy's, not the tool's
        pytest.param(
            b"PK\x03\x04broken",
            id="torn",
            marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
        ),
    ],
)
def test_an_unreadable_file_is_a_usage_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "rows.npz"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=r"not a readable \.npz"):
        load_rows([DEMO_INPUT], path)


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"not a readable \.npz"):
        load_rows([DEMO_INPUT], tmp_path / "absent.npz")


# --- with_drift -----------------------------------------------------------------------------------


def test_mean_shift_moves_the_chosen_columns_by_amount_standard_deviations() -> None:
    rows = _reference()
    original = rows["INPUT0"].copy()
    chosen = [0, 5, 63]
    drifted = with_drift(rows, DriftConfig(kind="mean_shift", amount=3.0, features=chosen))
    np.testing.assert_array_equal(rows["INPUT0"], original)  # the input is left alone
    assert drifted["INPUT0"].dtype == np.float32
    assert drifted["INPUT0"].shape == original.shape
    moved = drifted["INPUT0"].astype(np.float64) - original.astype(np.float64)
    spread = original.astype(np.float64).std(axis=0)
    for column in range(FEATURES):
        if column in chosen:
            # every row moves by the same 3 standard deviations of its column
            np.testing.assert_allclose(moved[:, column], 3.0 * spread[column], rtol=1e-4)
            assert spread[column] > 0.4  # a move worth the name (the demo's scales are >= 0.5)
        else:
            assert not moved[:, column].any(), column


def test_mean_shift_of_every_column_by_default() -> None:
    rows = _reference()
    original = rows["INPUT0"].astype(np.float64)
    drifted = with_drift(rows, DriftConfig(kind="mean_shift", amount=-2.0))
    shift = drifted["INPUT0"].astype(np.float64).mean(axis=0) - original.mean(axis=0)
    np.testing.assert_allclose(shift, -2.0 * original.std(axis=0), rtol=1e-4)
    np.testing.assert_allclose(
        drifted["INPUT0"].astype(np.float64).std(axis=0), original.std(axis=0), rtol=1e-4
    )


def test_columns_the_input_lacks_are_ignored() -> None:
    rows = {"x": np.random.default_rng(3).standard_normal((100, 4)).astype(np.float32)}
    drifted = with_drift(rows, DriftConfig(kind="mean_shift", amount=1.0, features=[1, 9]))
    moved = drifted["x"] - rows["x"]
    assert moved[:, 1].all()
    assert not moved[:, [0, 2, 3]].any()


def test_scale_multiplies_the_spread_around_the_mean() -> None:
    rows = _reference()
    original = rows["INPUT0"].astype(np.float64)
    drifted = with_drift(rows, DriftConfig(kind="scale", amount=2.5, features=[2, 3]))
    result = drifted["INPUT0"].astype(np.float64)
    for column in (2, 3):
        np.testing.assert_allclose(result[:, column].mean(), original[:, column].mean(), atol=1e-4)
        np.testing.assert_allclose(
            result[:, column].std(), 2.5 * original[:, column].std(), rtol=1e-4
        )
    untouched = [column for column in range(FEATURES) if column not in (2, 3)]
    np.testing.assert_array_equal(result[:, untouched], original[:, untouched])


def test_drift_of_a_higher_rank_input_moves_whole_channels() -> None:
    values = np.random.default_rng(5).standard_normal((50, 3, 4, 4)).astype(np.float32)
    drifted = with_drift({"image": values}, DriftConfig(kind="mean_shift", features=[1]))
    moved = drifted["image"] - values
    expected = values[:, 1].astype(np.float64).std()
    np.testing.assert_allclose(moved[:, 1], expected, rtol=1e-4)
    assert not moved[:, [0, 2]].any()


def test_category_swap_exchanges_two_values_of_integer_inputs() -> None:
    category = np.array([0, 1, 2, 3, 1, 2, 2, 5], dtype=np.int64)
    floats = np.linspace(0, 1, 8, dtype=np.float32)
    rows: Rows = {"category": category, "score": floats}
    drifted = with_drift(rows, DriftConfig(kind="category_swap", swap=(1, 2)))
    np.testing.assert_array_equal(drifted["category"], [0, 2, 1, 3, 2, 1, 1, 5])
    np.testing.assert_array_equal(drifted["score"], floats)  # only integer inputs change
    np.testing.assert_array_equal(rows["category"], [0, 1, 2, 3, 1, 2, 2, 5])  # not in place


def test_mean_shift_leaves_integer_inputs_alone() -> None:
    rows = {"category": np.arange(10, dtype=np.int32), "x": np.ones((10, 2), np.float32)}
    drifted = with_drift(rows, DriftConfig(kind="mean_shift", amount=3))
    np.testing.assert_array_equal(drifted["category"], rows["category"])


# --- requests -------------------------------------------------------------------------------------


def test_batched_requests_carry_rows_per_request_rows() -> None:
    rows = _reference()
    cut = requests(rows, 4, batched=True)
    assert len(cut) == REFERENCE_ROWS // 4
    assert all(request["INPUT0"].shape == (4, FEATURES) for request in cut)
    np.testing.assert_array_equal(cut[0]["INPUT0"], rows["INPUT0"][0:4])
    np.testing.assert_array_equal(cut[1]["INPUT0"], rows["INPUT0"][4:8])
    np.testing.assert_array_equal(cut[-1]["INPUT0"], rows["INPUT0"][-4:])


def test_one_row_batched_requests_keep_the_batch_dimension() -> None:
    rows = _reference()
    cut = requests(rows, 1, batched=True)
    assert len(cut) == REFERENCE_ROWS
    assert cut[7]["INPUT0"].shape == (1, FEATURES)
    np.testing.assert_array_equal(cut[7]["INPUT0"][0], rows["INPUT0"][7])


def test_a_partial_last_request_is_left_out() -> None:
    rows = {"x": np.arange(10, dtype=np.float32).reshape(10, 1)}
    cut = requests(rows, 3, batched=True)
    assert [request["x"][:, 0].tolist() for request in cut] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_unbatched_requests_are_single_rows_without_a_batch_dimension() -> None:
    rows: Rows = {"a": np.arange(30, dtype=np.float32).reshape(10, 3), "b": np.arange(10)}
    for size in (1, 4):  # rows_per_request cannot batch a model without a batch dimension
        cut = requests(rows, size, batched=False)
        assert len(cut) == 10
        assert cut[2]["a"].shape == (3,)
        np.testing.assert_array_equal(cut[2]["a"], [6, 7, 8])
        assert cut[2]["b"] == 2


def test_requests_of_several_inputs_take_the_same_rows() -> None:
    rows: Rows = {"a": np.arange(8, dtype=np.float32), "b": np.arange(8, dtype=np.int64) * 10}
    cut = requests(rows, 2, batched=True)
    assert [(r["a"].tolist(), r["b"].tolist()) for r in cut] == [
        ([0, 1], [0, 10]),
        ([2, 3], [20, 30]),
        ([4, 5], [40, 50]),
        ([6, 7], [60, 70]),
    ]


def test_at_most_max_requests_are_prepared() -> None:
    rows = {"x": np.zeros((MAX_REQUESTS * 2 + 7, 2), np.float32)}
    assert len(requests(rows, 1, batched=True)) == MAX_REQUESTS
    assert len(requests(rows, 1, batched=False)) == MAX_REQUESTS
    many = {"x": np.zeros((MAX_REQUESTS * 5, 2), np.float32)}
    assert len(requests(many, 3, batched=True)) == MAX_REQUESTS


def test_fewer_rows_than_a_request_still_make_one_request() -> None:
    rows = {"x": np.ones((2, 5), np.float32)}
    (only,) = requests(rows, 8, batched=True)
    assert only["x"].shape == (2, 5)
