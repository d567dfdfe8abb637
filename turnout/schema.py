"""What the config file and the admin API's bodies share: strict schemas (unknown keys refused)
and pydantic's errors rewritten as ``field.path: what is wrong`` lines."""

import re
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
VERSION_PATTERN = r"^[1-9][0-9]{0,18}$"
PATTERN_PROBLEMS = {
    NAME_PATTERN: (
        "must be 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"
    ),
    VERSION_PATTERN: "must be a positive integer",
}


_KEY_MARK = "[key]"


class Strict(BaseModel):
    """A schema that refuses unknown keys and is immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def version_text(value: Any) -> str:
    """A version given as an integer or text, as text; ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    raise ValueError(PATTERN_PROBLEMS[VERSION_PATTERN])


def describe_errors(
    error: ValidationError, union_tags: Mapping[str, Collection[str]] | None = None
) -> list[str]:
    """One ``field.path: problem`` line per error. ``union_tags`` maps a field name to the tags
    pydantic puts in the path after it for a tagged union; they are left out."""
    return [_describe(detail, union_tags or {}) for detail in error.errors()]


def _describe(error: Any, union_tags: Mapping[str, Collection[str]]) -> str:
    path = _field_path(error["loc"], union_tags)
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required"
    elif kind == "value_error":
        message = str(error["ctx"]["error"])
    elif kind == "string_pattern_mismatch":
        message = PATTERN_PROBLEMS.get(error["ctx"]["pattern"], error["msg"])
    else:
        message = error["msg"]
    return f"{path}: {message}" if path else message


def _field_path(loc: tuple[Any, ...], union_tags: Mapping[str, Collection[str]]) -> str:
    path = ""
    for index, part in enumerate(loc):
        previous = loc[index - 1] if index else None
        if part in union_tags.get(str(previous), ()) or part == _KEY_MARK:
            continue  # a tagged union's tag, or pydantic's mark of a mapping key: not a field
        if index + 1 < len(loc) and loc[index + 1] == _KEY_MARK:
            path += f"[{part!r}]"  # a mapping key whose own validation failed
        elif isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            path += f".{part}" if path else str(part)
        else:
            path += f"[{part!r}]"
    return path
