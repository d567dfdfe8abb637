"""Reading reference data sets (monitoring/reference.py) from real files: ``.npz`` arrays keyed
by input name and ``.csv`` tables with a header of feature names. A file that cannot be used
raises UnusableReference (a ValueError) naming the file and what is wrong with it; the caller
logs that and captures a reference from traffic instead, so any other exception type would
escape it."""

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from turnout.monitoring.reference import (
    UnusableReference,
    read_csv,
    read_npz,
    reference_columns,
)


def failure_of(action: Callable[[], object]) -> tuple[type[BaseException], str]:
    """The type and message of what ``action`` raised (the exception itself is let go)."""
    try:
        action()
    except Exception as error:
        return type(error), str(error)
    raise AssertionError("nothing was raised")


# -- .npz ------------------------------------------------------------------------------------


def test_read_npz_returns_the_inputs(tmp_path: Path) -> None:
    path = tmp_path / "reference.npz"
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids = np.array([3, 1, 4, 1], dtype=np.int64)
    np.savez(path, INPUT0=features, INPUT1=ids, extra=np.zeros(9))
    arrays = read_npz(path, ["INPUT0", "INPUT1"])
    assert sorted(arrays) == ["INPUT0", "INPUT1"]  # arrays for no input are left out
    assert arrays["INPUT0"].dtype == np.float32
    np.testing.assert_array_equal(arrays["INPUT0"], features)
    np.testing.assert_array_equal(arrays["INPUT1"], ids)


def test_read_npz_compressed(tmp_path: Path) -> None:
    path = tmp_path / "reference.npz"
    np.savez_compressed(path, x=np.linspace(0.0, 1.0, 50))
    assert read_npz(path, ["x"])["x"].tolist() == np.linspace(0.0, 1.0, 50).tolist()


def test_read_npz_text_arrays(tmp_path: Path) -> None:
    path = tmp_path / "reference.npz"
    np.savez(path, words=np.array(["a", "bb", "ccc"]))
    assert read_npz(path, ["words"])["words"].tolist() == ["a", "bb", "ccc"]


def test_npz_reference_columns(tmp_path: Path) -> None:
    path = tmp_path / "reference.npz"
    np.savez(
        path,
        INPUT0=np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32),
        INPUT1=np.array([7, 8, 9], dtype=np.int32),
    )
    found = reference_columns(read_npz(path, ["INPUT0", "INPUT1"]))
    assert sorted(found) == ["INPUT0[0]", "INPUT0[1]", "INPUT1"]
    assert found["INPUT0[1]"].values.tolist() == [2.0, 4.0, 6.0]
    assert found["INPUT0[1]"].numeric
    assert not found["INPUT1"].numeric
    assert found["INPUT1"].values.tolist() == [7, 8, 9]


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnusableReference, match=r"^absent\.npz: cannot be read"):
        read_npz(tmp_path / "absent.npz", ["x"])


def test_npz_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(UnusableReference, match=r"^folder\.npz: cannot be read"):
        read_npz(tmp_path / "folder.npz", ["x"])


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "text.npz"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(UnusableReference, match=r"^text\.npz: cannot be read"):
        read_npz(path, ["x"])


def test_npz_that_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(UnusableReference, match=r"^empty\.npz: cannot be read"):
        read_npz(path, ["x"])


def test_npz_that_is_a_single_npy_array(tmp_path: Path) -> None:
    """An ``.npy`` (one array, no names) given where an ``.npz`` is wanted."""
    path = tmp_path / "array.npz"
    with path.open("wb") as file:
        np.save(file, np.arange(5.0))
    with pytest.raises(UnusableReference, match=r"^array\.npz: "):
        read_npz(path, ["x"])


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_npz_that_is_a_truncated_archive(tmp_path: Path) -> None:
    """A download cut short. (numpy leaves the file open when the archive is bad, whatever
    read_npz does with the error: the exception is kept no longer than this test, and the
    warning about the file numpy left open is collected here, not at the end of the run.)"""
    whole = tmp_path / "whole.npz"
    np.savez(whole, x=np.arange(1000.0))
    path = tmp_path / "truncated.npz"
    path.write_bytes(whole.read_bytes()[:100])
    raised = failure_of(lambda: read_npz(path, ["x"]))
    gc.collect()
    assert raised[0] is UnusableReference, raised
    assert raised[1].startswith("truncated.npz: cannot be read")


def test_npz_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    objects = np.empty(2, dtype=object)
    objects[:] = [b"a", {"b": 1}]
    np.savez(path, x=objects)
    with pytest.raises(UnusableReference, match=r"^objects\.npz: cannot be read"):
        read_npz(path, ["x"])


def test_npz_with_no_arrays(tmp_path: Path) -> None:
    path = tmp_path / "nothing.npz"
    np.savez(path)
    with pytest.raises(UnusableReference, match=r"^nothing\.npz: no array for input x, y$"):
        read_npz(path, ["x", "y"])


def test_npz_missing_an_input(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, x=np.zeros(3), z=np.zeros(3))
    with pytest.raises(UnusableReference, match=r"^partial\.npz: no array for input y$"):
        read_npz(path, ["x", "y"])


def test_npz_inputs_of_different_row_counts(tmp_path: Path) -> None:
    path = tmp_path / "ragged.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(UnusableReference, match=r"^ragged\.npz: the inputs must have the same"):
        read_npz(path, ["x", "y"])


def test_npz_with_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "zero.npz"
    np.savez(path, x=np.zeros((0, 2)))
    with pytest.raises(UnusableReference, match=r"non-zero, row count"):
        read_npz(path, ["x"])


def test_npz_with_a_scalar_input(tmp_path: Path) -> None:
    """A 0-d array has no rows (the format is one row per first-axis entry)."""
    path = tmp_path / "scalar.npz"
    np.savez(path, x=np.float32(3.0))
    with pytest.raises(UnusableReference, match=r"^scalar\.npz: "):
        read_npz(path, ["x"])


def test_npz_errors_are_value_errors() -> None:
    assert issubclass(UnusableReference, ValueError)


# -- .csv ------------------------------------------------------------------------------------


def test_read_csv_header_names_the_features(tmp_path: Path) -> None:
    path = tmp_path / "reference.csv"
    path.write_text("INPUT0[0],INPUT0[1],colour\n1.5,2,red\n-3,4e2,blue\n0.25,nan,red\n")
    found = read_csv(path)
    assert list(found) == ["INPUT0[0]", "INPUT0[1]", "colour"]
    assert found["INPUT0[0]"].numeric
    assert found["INPUT0[0]"].values.dtype == np.float64
    assert found["INPUT0[0]"].values.tolist() == [1.5, -3.0, 0.25]
    second = found["INPUT0[1]"].values
    assert second[:2].tolist() == [2.0, 400.0]
    assert np.isnan(second[2])
    assert not found["colour"].numeric
    assert found["colour"].values.dtype == object
    assert found["colour"].values.tolist() == ["red", "blue", "red"]


def test_read_csv_quoted_fields(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    path.write_text('"name, with comma",x\n"a ""b""",1\nc,2\n', encoding="utf-8")
    found = read_csv(path)
    assert found["name, with comma"].values.tolist() == ['a "b"', "c"]
    assert found["x"].values.tolist() == [1.0, 2.0]


def test_read_csv_one_row(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("x\n7\n")
    found = read_csv(path)
    assert found["x"].values.tolist() == [7.0]


def test_read_csv_unicode(tmp_path: Path) -> None:
    path = tmp_path / "unicode.csv"
    path.write_text("città,x\nMünchen,1\n東京,2\n", encoding="utf-8")
    assert read_csv(path)["città"].values.tolist() == ["München", "東京"]


def test_a_non_numeric_cell_makes_the_column_categorical(tmp_path: Path) -> None:
    """Not an error: a column is numeric only where every value parses as a number."""
    path = tmp_path / "mixed.csv"
    path.write_text("x,y\n1,2\noops,3\n4,\n")
    found = read_csv(path)
    assert not found["x"].numeric
    assert found["x"].values.tolist() == ["1", "oops", "4"]
    assert not found["y"].numeric  # an empty cell is not a number either
    assert found["y"].values.tolist() == ["2", "3", ""]


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnusableReference, match=r"^absent\.csv: cannot be read"):
        read_csv(tmp_path / "absent.csv")


def test_csv_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(UnusableReference, match=r"^folder\.csv: cannot be read"):
        read_csv(tmp_path / "folder.csv")


@pytest.mark.parametrize("text", ["", "x,y\n", "x,y"])
def test_csv_without_rows(tmp_path: Path, text: str) -> None:
    path = tmp_path / "short.csv"
    path.write_text(text)
    with pytest.raises(
        UnusableReference, match=r"^short\.csv: needs a header and at least one row$"
    ):
        read_csv(path)


@pytest.mark.parametrize("text", ["x,y\n1,2\n3\n", "x,y\n1,2\n3,4,5\n", "x,y\n1,2\n,\n3\n"])
def test_csv_ragged_rows(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text(text)
    with pytest.raises(UnusableReference, match=r"^ragged\.csv: every row must have 2 fields$"):
        read_csv(path)


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("name\nM\u00fcnchen\n".encode("latin-1"))
    with pytest.raises(UnusableReference, match=r"^latin\.csv: cannot be read"):
        read_csv(path)


def test_csv_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    np.savez(path.with_suffix(".npz"), x=np.arange(10))
    path.write_bytes(path.with_suffix(".npz").read_bytes())
    with pytest.raises(UnusableReference, match=r"^binary\.csv: "):
        read_csv(path)


def test_csv_blank_lines_and_a_byte_order_mark_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "spreadsheet.csv"
    path.write_bytes("\ufeffx,y\n1,a\n\n2,b\n\n".encode())
    found = read_csv(path)
    assert list(found) == ["x", "y"]
    assert found["x"].values.tolist() == [1.0, 2.0]
    assert found["y"].values.tolist() == ["a", "b"]
