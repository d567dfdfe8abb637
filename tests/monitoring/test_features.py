"""Features (monitoring/features.py): how tensors become named one-dimensional columns, as the
module's docstring lays out: ``[rows, F]`` gives ``NAME[i]``, ``[rows]`` gives ``NAME``, rank 3
and up gives one ``NAME[c]`` per position of the second axis (a numeric channel's mean),
floating-point is numeric and the rest categorical, BYTES become text, a model without a batch
dimension is one row, and no tensor gives more than MAX_FEATURES_PER_TENSOR features."""

import numpy as np
import pytest

from turnout.monitoring.features import MAX_FEATURES_PER_TENSOR, Column, columns
from turnout.monitoring.profile import CategoricalReference, compare, reference_of
from turnout.monitoring.records import DEFAULT_BOUNDS, Thresholds


def object_array(values: list[object]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def test_a_row_vector_tensor_is_one_feature() -> None:
    found = columns({"age": np.array([31.0, 45.5, 27.0], dtype=np.float32)}, batched=True)
    assert list(found) == ["age"]
    assert found["age"].numeric
    assert found["age"].values.dtype == np.float64
    assert found["age"].values.tolist() == [31.0, 45.5, 27.0]


def test_a_matrix_tensor_is_one_feature_per_column() -> None:
    tensor = np.arange(12, dtype=np.float32).reshape(4, 3)
    found = columns({"INPUT0": tensor}, batched=True)
    assert list(found) == ["INPUT0[0]", "INPUT0[1]", "INPUT0[2]"]
    assert found["INPUT0[0]"].values.tolist() == [0.0, 3.0, 6.0, 9.0]
    assert found["INPUT0[2]"].values.tolist() == [2.0, 5.0, 8.0, 11.0]
    assert all(column.numeric for column in found.values())


def test_several_tensors_keep_their_own_names() -> None:
    found = columns(
        {"a": np.zeros((2, 2), dtype=np.float64), "b": np.array([1, 2], dtype=np.int64)},
        batched=True,
    )
    assert sorted(found) == ["a[0]", "a[1]", "b"]


def test_a_higher_rank_numeric_tensor_is_one_mean_per_channel() -> None:
    # [rows=2, C=3, H=2, W=2]: each feature is a channel's mean over H and W
    tensor = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    found = columns({"image": tensor}, batched=True)
    assert list(found) == ["image[0]", "image[1]", "image[2]"]
    # row 0, channel 0 holds 0..3 (mean 1.5); row 1, channel 2 holds 20..23 (mean 21.5)
    assert found["image[0]"].values.tolist() == [1.5, 13.5]
    assert found["image[1]"].values.tolist() == [5.5, 17.5]
    assert found["image[2]"].values.tolist() == [9.5, 21.5]
    assert all(column.numeric for column in found.values())


def test_a_rank_three_tensor_is_one_feature_per_position_of_its_second_axis() -> None:
    tensor = np.array([[[1.0, 3.0], [10.0, 20.0]]], dtype=np.float64)  # [1, 2, 2]
    found = columns({"seq": tensor}, batched=True)
    assert {name: column.values.tolist() for name, column in found.items()} == {
        "seq[0]": [2.0],
        "seq[1]": [15.0],
    }


def test_a_higher_rank_categorical_tensor_is_one_feature_per_channel() -> None:
    # no mean of categories: the module takes each channel's first element
    tensor = np.array([[[7, 8], [9, 9]], [[1, 2], [3, 4]]], dtype=np.int64)  # [2, 2, 2]
    found = columns({"tokens": tensor}, batched=True)
    assert list(found) == ["tokens[0]", "tokens[1]"]
    assert not found["tokens[0]"].numeric
    assert found["tokens[0]"].values.tolist() == [7, 1]
    assert found["tokens[1]"].values.tolist() == [9, 3]


@pytest.mark.parametrize(
    ("dtype", "numeric"),
    [
        (np.float16, True),
        (np.float32, True),
        (np.float64, True),
        (np.int8, False),
        (np.int32, False),
        (np.int64, False),
        (np.uint8, False),
        (np.uint64, False),
        (np.bool_, False),
    ],
)
def test_numeric_or_categorical_by_dtype(dtype: type, numeric: bool) -> None:
    found = columns({"x": np.array([[1, 0], [0, 1]], dtype=dtype)}, batched=True)
    assert [column.numeric for column in found.values()] == [numeric, numeric]
    assert found["x[0]"].values.tolist() == ([1.0, 0.0] if numeric else [1, 0])


def test_categorical_values_keep_their_values() -> None:
    found = columns({"flag": np.array([True, False, True])}, batched=True)
    assert found["flag"].values.tolist() == [True, False, True]
    ints = columns({"code": np.array([3, 3, 9], dtype=np.int32)}, batched=True)
    assert ints["code"].values.tolist() == [3, 3, 9]


def test_bytes_elements_become_text() -> None:
    tensor = object_array([b"cat", b"dog", "bird", b"\xff\xfeow"])
    found = columns({"animal": tensor}, batched=True)
    column = found["animal"]
    assert not column.numeric
    assert column.values.dtype == object
    assert column.values.tolist() == ["cat", "dog", "bird", "\ufffd\ufffdow"]


def test_fixed_width_text_is_categorical() -> None:
    found = columns({"word": np.array(["to", "be", "or"])}, batched=True)
    assert not found["word"].numeric
    assert [str(value) for value in found["word"].values] == ["to", "be", "or"]


def test_bytes_matrix_columns_become_text() -> None:
    tensor = np.empty((2, 2), dtype=object)
    tensor[:] = [[b"a", b"b"], [b"c", b"d"]]
    found = columns({"words": tensor}, batched=True)
    assert found["words[0]"].values.tolist() == ["a", "c"]
    assert found["words[1]"].values.tolist() == ["b", "d"]


def test_fixed_width_bytes_are_the_same_categories_as_bytes_elements() -> None:
    """A BYTES reference saved in an .npz comes back as fixed-width bytes (dtype ``S``: object
    arrays need pickle, which read_npz refuses); live BYTES tensors are object arrays of bytes.
    Both must give the same category names, or every live value is an unseen category."""
    reference = columns({"animal": np.array([b"cat", b"dog", b"cat"])}, batched=True)
    live = columns({"animal": object_array([b"cat", b"dog", b"cat"])}, batched=True)
    profile = reference_of(reference["animal"], np.random.default_rng(0))
    assert isinstance(profile, CategoricalReference)
    assert profile.categories == ("cat", "dog")
    drift = compare(profile, live["animal"], Thresholds(DEFAULT_BOUNDS))
    assert drift.values["out_of_range_rate"] == 0.0


def test_unbatched_tensors_are_one_row() -> None:
    vector = columns({"x": np.array([1.0, 2.0, 3.0])}, batched=False)
    assert {name: column.values.tolist() for name, column in vector.items()} == {
        "x[0]": [1.0],
        "x[1]": [2.0],
        "x[2]": [3.0],
    }
    scalar = columns({"s": np.array(4.5)}, batched=False)
    assert {name: column.values.tolist() for name, column in scalar.items()} == {"s": [4.5]}
    image = columns({"img": np.arange(8, dtype=np.float32).reshape(2, 2, 2)}, batched=False)
    assert {name: column.values.tolist() for name, column in image.items()} == {
        "img[0]": [1.5],
        "img[1]": [5.5],
    }


def test_batched_and_unbatched_agree_on_one_row() -> None:
    row = np.array([[0.5, 1.5, 2.5]])
    batched = columns({"x": row}, batched=True)
    unbatched = columns({"x": row[0]}, batched=False)
    assert {name: column.values.tolist() for name, column in batched.items()} == {
        name: column.values.tolist() for name, column in unbatched.items()
    }


def test_features_per_tensor_are_capped() -> None:
    wide = np.zeros((2, MAX_FEATURES_PER_TENSOR + 10), dtype=np.float32)
    found = columns({"wide": wide}, batched=True)
    assert len(found) == MAX_FEATURES_PER_TENSOR
    assert f"wide[{MAX_FEATURES_PER_TENSOR - 1}]" in found
    assert f"wide[{MAX_FEATURES_PER_TENSOR}]" not in found
    channels = np.zeros((1, MAX_FEATURES_PER_TENSOR + 1, 2, 2), dtype=np.float32)
    assert len(columns({"deep": channels}, batched=True)) == MAX_FEATURES_PER_TENSOR


def test_the_cap_is_per_tensor() -> None:
    wide = np.zeros((1, MAX_FEATURES_PER_TENSOR), dtype=np.float32)
    found = columns({"a": wide, "b": wide}, batched=True)
    assert len(found) == 2 * MAX_FEATURES_PER_TENSOR


def test_nan_passes_through_numeric_features() -> None:
    found = columns({"x": np.array([1.0, np.nan, np.inf])}, batched=True)
    values = found["x"].values
    assert values[0] == 1.0
    assert np.isnan(values[1])
    assert np.isposinf(values[2])


def test_column_is_a_plain_record() -> None:
    column = Column(np.array([1.0]), numeric=True)
    assert column.numeric
    assert column.values.tolist() == [1.0]
