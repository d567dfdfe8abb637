"""Byte counts from request headers: decimals of bounded length, refused (400) otherwise."""

import pytest

from turnout.errors import InvalidInput
from turnout.server.http.body import MAX_COUNT_DIGITS, byte_count


@pytest.mark.parametrize(
    ("value", "count"),
    [("0", 0), ("000", 0), ("17", 17), ("0042", 42), ("9" * MAX_COUNT_DIGITS, 10**20 - 1)],
)
def test_a_decimal_is_its_count(value: str, count: int) -> None:
    assert byte_count(value, "Content-Length") == count


@pytest.mark.parametrize(
    "value",
    ["", "-1", "+1", "1.0", " 1", "1e3", "٣", "1" * (MAX_COUNT_DIGITS + 1), "7" * 5000],
)
def test_anything_else_is_refused_naming_the_header(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"^Content-Length must be a non-negative integer"):
        byte_count(value, "Content-Length")


def test_leading_zeros_do_not_count_towards_the_digits() -> None:
    assert byte_count("0" * 5000 + "12", "Content-Length") == 12
