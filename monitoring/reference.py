"""Reading reference data sets: ``.npz`` (arrays keyed by input name, one row per first-axis
entry) or ``.csv`` (a header of feature names, ``INPUT0[3]`` style, one row per line)."""

import csv
import zipfile
from pathlib import Path

import numpy as np

from turnout.monitoring.features import Column, columns


class UnusableReference(ValueError):
    """The reference file cannot be read or does not fit the model."""


def read_npz(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    """The reference inputs of an ``.npz``; UnusableReference unless it holds every input."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UnusableReference(f"{path.name}: not an .npz archive of named arrays")
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    # A damaged archive surfaces as whichever of these its first bad byte provokes.
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UnusableReference(f"{path.name}: cannot be read ({error})") from None
    missing = [name for name in input_names if name not in arrays]
    if missing:
        raise UnusableReference(f"{path.name}: no array for input {', '.join(missing)}")
    if any(arrays[name].ndim == 0 for name in input_names):
        raise UnusableReference(f"{path.name}: every input needs rows along its first axis")
    rows = {len(arrays[name]) for name in input_names}
    if len(rows) != 1 or 0 in rows:
        raise UnusableReference(f"{path.name}: the inputs must have the same, non-zero, row count")
    return {name: arrays[name] for name in input_names}


def read_csv(path: Path) -> dict[str, Column]:
    """The reference features of a ``.csv``: numeric columns where every value parses as a
    number, categorical otherwise."""
    try:
        # utf-8-sig: spreadsheets start their CSV files with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as file:
            table = [row for row in csv.reader(file) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UnusableReference(f"{path.name}: cannot be read ({error})") from None
    if len(table) < 2:
        raise UnusableReference(f"{path.name}: needs a header and at least one row")
    header, rows = table[0], table[1:]
    if any(len(row) != len(header) for row in rows):
        raise UnusableReference(f"{path.name}: every row must have {len(header)} fields")
    found = {}
    for index, name in enumerate(header):
        texts = [row[index] for row in rows]
        try:
            found[name] = Column(np.array([float(text) for text in texts]), numeric=True)
        except ValueError:
            found[name] = Column(np.array(texts, dtype=object), numeric=False)
    return found


def reference_columns(arrays: dict[str, np.ndarray]) -> dict[str, Column]:
    """The features of reference arrays (always one row per first-axis entry)."""
    return columns(arrays, batched=True)
