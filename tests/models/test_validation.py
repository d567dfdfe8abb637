"""Checking a request against a model's signature (models/validation.py), and the quoting that
keeps client-sent names short in messages (turnout/errors.py)."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from turnout.errors import InvalidInput, quoted, quoted_list
from turnout.models.datatypes import DATATYPES
from turnout.models.types import ModelRequest, ModelSignature, TensorSpec
from turnout.models.validation import validate_request


def signature(
    inputs: dict[str, tuple[str, tuple[int, ...]]],
    outputs: dict[str, tuple[str, tuple[int, ...]]],
    max_batch_size: int,
    name: str = "model",
) -> ModelSignature:
    def specs(tensors: dict[str, tuple[str, tuple[int, ...]]]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(tensor, DATATYPES[datatype], shape)
            for tensor, (datatype, shape) in tensors.items()
        )

    return ModelSignature(
        name, "1", "onnxruntime_onnx", specs(inputs), specs(outputs), max_batch_size
    )


# Batched: two inputs and two outputs with a variable first dimension, up to 4 rows.
BATCHED = signature(
    {"A": ("FP32", (-1, 3)), "B": ("INT64", (-1,))},
    {"SUM": ("FP32", (-1, 3)), "LABEL": ("INT64", (-1,))},
    max_batch_size=4,
)
# Not batched: fixed shapes and one variable inner dimension.
FIXED = signature(
    {"X": ("FP32", (2, 3)), "T": ("BYTES", (2, -1))},
    {"Y": ("FP32", (2, 3))},
    max_batch_size=0,
    name="fixed",
)


def a(rows: int) -> np.ndarray:
    return np.zeros((rows, 3), dtype=np.float32)


def b(rows: int) -> np.ndarray:
    return np.zeros(rows, dtype=np.int64)


def x() -> np.ndarray:
    return np.zeros((2, 3), dtype=np.float32)


def t(width: int = 5) -> np.ndarray:
    return np.full((2, width), b"text", dtype=object)


@dataclass
class Case:
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None = None
    sig: ModelSignature = field(default=BATCHED)


VALID = [
    pytest.param(Case({"A": a(1), "B": b(1)}), id="one-row"),
    pytest.param(Case({"A": a(4), "B": b(4)}), id="max-rows"),
    pytest.param(Case({"B": b(2), "A": a(2)}), id="any-input-order"),
    pytest.param(Case({"A": a(2), "B": b(2)}, ("LABEL",)), id="output-subset"),
    pytest.param(Case({"A": a(2), "B": b(2)}, ("LABEL", "SUM")), id="all-outputs-reordered"),
    pytest.param(Case({"A": a(2), "B": b(2)}, ()), id="no-outputs-named"),
    pytest.param(Case({"X": x(), "T": t()}, sig=FIXED), id="fixed-shape"),
    pytest.param(Case({"X": x(), "T": t(0)}, sig=FIXED), id="variable-inner-dim-zero"),
    pytest.param(
        Case({"X": x().astype(">f4"), "T": t()}, sig=FIXED), id="big-endian-same-datatype"
    ),
]


@pytest.mark.parametrize("case", VALID)
def test_valid_requests_pass(case: Case) -> None:
    validate_request(case.sig, ModelRequest(case.inputs, case.outputs))


INVALID = [
    # names
    pytest.param(
        Case({"A": a(1), "B": b(1), "C": b(1)}),
        "unknown input 'C'; model 'model' takes 'A', 'B'",
        id="unknown-input",
    ),
    pytest.param(
        Case({"a": a(1), "b": b(1)}),
        "unknown input 'a', 'b'; model 'model' takes 'A', 'B'",
        id="unknown-inputs-case-matters",
    ),
    pytest.param(Case({"A": a(1)}), "missing input 'B' for model 'model'", id="missing-input"),
    pytest.param(Case({}), "missing input 'A', 'B' for model 'model'", id="no-inputs"),
    pytest.param(
        Case({"A": a(1), "Z": b(1)}),
        "unknown input 'Z'; model 'model' takes 'A', 'B'",
        id="unknown-before-missing",
    ),
    # datatypes
    pytest.param(
        Case({"A": a(1).astype(np.float64), "B": b(1)}),
        "input 'A': expected datatype FP32, got FP64",
        id="datatype-fp64",
    ),
    pytest.param(
        Case({"A": a(1), "B": b(1).astype(np.int32)}),
        "input 'B': expected datatype INT64, got INT32",
        id="datatype-int32",
    ),
    pytest.param(
        Case({"A": a(1).astype(np.complex64), "B": b(1)}),
        "input 'A': expected datatype FP32, got complex64",
        id="datatype-not-served",
    ),
    pytest.param(
        Case({"X": x(), "T": np.full((2, 5), b"text")}, sig=FIXED),
        "input 'T': expected datatype BYTES, got |S4",
        id="fixed-width-bytes-not-bytes",
    ),
    pytest.param(
        Case({"X": x().astype(object), "T": t()}, sig=FIXED),
        "input 'X': expected datatype FP32, got BYTES",
        id="objects-for-numbers",
    ),
    # ranks and dimensions
    pytest.param(
        Case({"A": np.zeros(3, np.float32), "B": b(1)}),
        "input 'A': expected shape [-1, 3], got [3]",
        id="rank-too-low",
    ),
    pytest.param(
        Case({"A": np.zeros((1, 3, 1), np.float32), "B": b(1)}),
        "input 'A': expected shape [-1, 3], got [1, 3, 1]",
        id="rank-too-high",
    ),
    pytest.param(
        Case({"A": np.zeros((2, 4), np.float32), "B": b(2)}),
        "input 'A': expected shape [-1, 3], got [2, 4]",
        id="inner-dim",
    ),
    pytest.param(
        Case({"X": np.zeros((3, 3), np.float32), "T": t()}, sig=FIXED),
        "input 'X': expected shape [2, 3], got [3, 3]",
        id="fixed-first-dim",
    ),
    pytest.param(
        Case({"X": x(), "T": np.full((3, 5), b"", dtype=object)}, sig=FIXED),
        "input 'T': expected shape [2, -1], got [3, 5]",
        id="fixed-dim-beside-variable",
    ),
    pytest.param(
        Case({"X": np.zeros((), np.float32), "T": t()}, sig=FIXED),
        "input 'X': expected shape [2, 3], got []",
        id="scalar",
    ),
    # batch sizes
    pytest.param(
        Case({"A": a(0), "B": b(0)}),
        "batch size (first dimension) 0 is outside 1..4, the range model 'model' accepts",
        id="batch-0",
    ),
    pytest.param(
        Case({"A": a(5), "B": b(5)}),
        "batch size (first dimension) 5 is outside 1..4, the range model 'model' accepts",
        id="batch-over-max",
    ),
    pytest.param(
        Case({"A": a(2), "B": b(3)}),
        "inputs disagree on the batch size (first dimension): 'A' has 2, 'B' has 3",
        id="batch-disagreement",
    ),
    pytest.param(
        Case({"A": a(9), "B": b(1)}),
        "inputs disagree on the batch size (first dimension): 'A' has 9, 'B' has 1",
        id="disagreement-before-range",
    ),
    # outputs
    pytest.param(
        Case({"A": a(1), "B": b(1)}, ("PROBS",)),
        "unknown output 'PROBS'; model 'model' gives 'SUM', 'LABEL'",
        id="unknown-output",
    ),
    pytest.param(
        Case({"A": a(1), "B": b(1)}, ("SUM", "x", "y")),
        "unknown output 'x', 'y'; model 'model' gives 'SUM', 'LABEL'",
        id="unknown-outputs",
    ),
    pytest.param(
        Case({"X": x(), "T": t()}, ("A",), sig=FIXED),
        "unknown output 'A'; model 'fixed' gives 'Y'",
        id="input-name-as-output",
    ),
]


@pytest.mark.parametrize(("case", "message"), INVALID)
def test_invalid_requests_name_what_was_expected(case: Case, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_request(case.sig, ModelRequest(case.inputs, case.outputs))

    assert caught.value.message == message
    assert str(caught.value) == message


def test_huge_input_name_is_clipped() -> None:
    name = "N" * 100_000

    with pytest.raises(InvalidInput) as caught:
        validate_request(BATCHED, ModelRequest({"A": a(1), "B": b(1), name: b(1)}))

    clipped = "'" + "N" * 64 + "…'"
    assert caught.value.message == f"unknown input {clipped}; model 'model' takes 'A', 'B'"


def test_many_unknown_names_are_counted_not_listed() -> None:
    extra = {f"extra{i}": b(1) for i in range(1000)}

    with pytest.raises(InvalidInput) as caught:
        validate_request(BATCHED, ModelRequest({"A": a(1), "B": b(1), **extra}))

    shown = ", ".join(f"'extra{i}'" for i in range(8))
    assert caught.value.message == (
        f"unknown input {shown} and 992 more; model 'model' takes 'A', 'B'"
    )


def test_huge_output_names_are_clipped_and_counted() -> None:
    names = tuple("O" * 1000 + str(i) for i in range(10))

    with pytest.raises(InvalidInput) as caught:
        validate_request(BATCHED, ModelRequest({"A": a(1), "B": b(1)}, names))

    clipped = "'" + "O" * 64 + "…'"
    assert caught.value.message == (
        f"unknown output {', '.join([clipped] * 8)} and 2 more; model 'model' gives 'SUM', 'LABEL'"
    )
    assert len(caught.value.message) < 1000


def test_long_model_and_tensor_names_are_clipped_in_shape_errors() -> None:
    long_input = "I" * 200
    sig = signature({long_input: ("FP32", (-1, 3))}, {"O": ("FP32", (-1, 3))}, 4, name="M" * 200)

    with pytest.raises(InvalidInput) as caught:
        validate_request(sig, ModelRequest({long_input: np.zeros((1, 2), np.float32)}))

    assert caught.value.message == ("input '" + "I" * 64 + "…': expected shape [-1, 3], got [1, 2]")


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("abc", 64, "'abc'", id="short"),
        pytest.param("a" * 64, 64, "'" + "a" * 64 + "'", id="at-limit"),
        pytest.param("a" * 65, 64, "'" + "a" * 64 + "…'", id="over-limit"),
        pytest.param("abcdef", 3, "'abc…'", id="custom-limit"),
        pytest.param("it's", 64, '"it\'s"', id="quote-inside"),
        pytest.param("new\nline", 64, "'new\\nline'", id="control-character-escaped"),
        pytest.param("", 64, "''", id="empty"),
    ],
)
def test_quoted(text: str, limit: int, expected: str) -> None:
    assert quoted(text, limit) == expected


@pytest.mark.parametrize(
    ("names", "limit", "expected"),
    [
        pytest.param([], 8, "", id="none"),
        pytest.param(["a"], 8, "'a'", id="one"),
        pytest.param(["a", "b", "c"], 3, "'a', 'b', 'c'", id="at-limit"),
        pytest.param(["a", "b", "c", "d"], 3, "'a', 'b', 'c' and 1 more", id="one-over"),
        pytest.param([str(i) for i in range(20)], 2, "'0', '1' and 18 more", id="many"),
    ],
)
def test_quoted_list(names: list[str], limit: int, expected: str) -> None:
    assert quoted_list(iter(names), limit) == expected
