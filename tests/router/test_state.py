"""Run-time state on disk (router/state.py): atomic replacement of routes and bandit statistics,
unreadable files ignored, and the append-only audit log."""

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from turnout.router.state import AUDIT_FILE, BANDITS_FILE, ROUTES_FILE, StateStore

ROUTES = {
    "mlp": {
        "route": {"policy": "canary", "weights": {"1": 90.0, "2": 10.0}},
        "history": [{"policy": "latest"}],
    },
    "other": {
        "route": {"policy": "rollout", "stable": "1", "canary": "2"},
        "history": [],
        "rollout": {"step": 2, "status": "running", "reason": ""},
    },
}
BANDITS = {"mlp": {"1": {"pulls": 3, "rewards": 2, "total": 1.0, "total_squares": 1.0}}}


def test_a_new_directory_is_made(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"

    store = StateStore(directory)

    assert directory.is_dir()
    assert store.load_routes() == {}
    assert store.load_bandits() == {}
    assert store.read_audit(10) == []


def test_routes_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)

    store.save_routes(ROUTES)

    assert store.load_routes() == ROUTES
    assert StateStore(tmp_path).load_routes() == ROUTES, "another store over the same directory"
    assert json.loads((tmp_path / ROUTES_FILE).read_text(encoding="utf-8")) == ROUTES


def test_bandits_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)

    store.save_bandits(BANDITS)

    assert store.load_bandits() == BANDITS
    assert store.load_routes() == {}, "the two files are separate"


def test_saving_replaces(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_routes(ROUTES)

    store.save_routes({"mlp": {"route": {"policy": "latest"}, "history": []}})

    assert store.load_routes() == {"mlp": {"route": {"policy": "latest"}, "history": []}}
    assert sorted(path.name for path in tmp_path.iterdir()) == [ROUTES_FILE]


@pytest.mark.parametrize(
    ("save", "load", "name"),
    [
        pytest.param(StateStore.save_routes, StateStore.load_routes, ROUTES_FILE, id="routes"),
        pytest.param(StateStore.save_bandits, StateStore.load_bandits, BANDITS_FILE, id="bandits"),
    ],
)
@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(OSError(28, "No space left on device"), id="os-error"),
        pytest.param(KeyboardInterrupt(), id="interrupted"),
    ],
)
def test_a_crash_during_a_save_keeps_the_old_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    save: Callable[[StateStore, dict[str, Any]], None],
    load: Callable[[StateStore], dict[str, Any]],
    name: str,
    failure: BaseException,
) -> None:
    store = StateStore(tmp_path)
    save(store, {"old": {"kept": True}})
    before = (tmp_path / name).read_bytes()

    def crash(source: str, target: str) -> None:
        raise failure

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(type(failure)):
        save(store, {"new": {"kept": False}})
    monkeypatch.undo()

    assert (tmp_path / name).read_bytes() == before
    assert load(store) == {"old": {"kept": True}}
    assert sorted(path.name for path in tmp_path.iterdir()) == [name], "a temporary file is left"


def test_a_crash_while_writing_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)

    def crash(descriptor: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="Input/output error"):
        store.save_routes(ROUTES)
    monkeypatch.undo()

    assert list(tmp_path.iterdir()) == []
    assert store.load_routes() == {}


def test_an_unserialisable_document_leaves_the_old_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save_routes(ROUTES)

    with pytest.raises(TypeError):
        store.save_routes({"mlp": {1, 2}})

    assert store.load_routes() == ROUTES
    assert sorted(path.name for path in tmp_path.iterdir()) == [ROUTES_FILE]


@pytest.mark.parametrize(
    ("write", "logged"),
    [
        pytest.param(
            lambda path: path.write_text("{not json", encoding="utf-8"), True, id="garbage"
        ),
        pytest.param(
            lambda path: path.write_text('{"mlp": {"route": ', encoding="utf-8"), True, id="torn"
        ),
        pytest.param(lambda path: path.write_bytes(b'{"\xff": 1}'), True, id="not-utf8"),
        pytest.param(lambda path: path.write_text("", encoding="utf-8"), True, id="empty"),
        pytest.param(lambda path: path.mkdir(), True, id="a-directory"),
        pytest.param(lambda path: path.write_text("[1, 2]", encoding="utf-8"), False, id="a-list"),
        pytest.param(lambda path: path.write_text("null", encoding="utf-8"), False, id="null"),
    ],
)
def test_an_unreadable_routes_file_is_ignored(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    write: Callable[[Path], Any],
    logged: bool,
) -> None:
    store = StateStore(tmp_path)
    write(tmp_path / ROUTES_FILE)

    with caplog.at_level(logging.ERROR, logger="turnout.router.state"):
        assert store.load_routes() == {}

    messages = [record.getMessage() for record in caplog.records]
    if logged:
        assert len(messages) == 1, messages
        assert messages[0].startswith(f"ignoring unreadable state file {tmp_path / ROUTES_FILE}")
    else:
        assert messages == []


def test_an_unreadable_routes_file_is_replaced_by_the_next_save(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / ROUTES_FILE).write_text("{not json", encoding="utf-8")

    store.save_routes(ROUTES)

    assert store.load_routes() == ROUTES


def entry(number: int) -> dict[str, Any]:
    return {"who": "ops", "action": "set", "endpoint": "mlp", "n": number}


def test_audit_entries_are_appended_one_a_line(tmp_path: Path) -> None:
    store = StateStore(tmp_path)

    for number in range(3):
        store.append_audit(entry(number))

    lines = (tmp_path / AUDIT_FILE).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [entry(0), entry(1), entry(2)]
    assert store.read_audit(10) == [entry(0), entry(1), entry(2)]
    assert StateStore(tmp_path).read_audit(10) == [entry(0), entry(1), entry(2)]


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        pytest.param(1, [4], id="one"),
        pytest.param(3, [2, 3, 4], id="three"),
        pytest.param(5, [0, 1, 2, 3, 4], id="all"),
        pytest.param(100, [0, 1, 2, 3, 4], id="more-than-there-are"),
    ],
)
def test_read_audit_gives_the_latest_oldest_first(
    tmp_path: Path, limit: int, expected: list[int]
) -> None:
    store = StateStore(tmp_path)
    for number in range(5):
        store.append_audit(entry(number))

    assert store.read_audit(limit) == [entry(number) for number in expected]


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for number in range(3):
        store.append_audit(entry(number))
    with (tmp_path / AUDIT_FILE).open("a", encoding="utf-8") as audit:
        audit.write('{"who": "ops", "act')  # a crash in the middle of a write

    assert store.read_audit(10) == [entry(0), entry(1), entry(2)]


def test_a_torn_last_line_does_not_count_against_the_limit(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for number in range(3):
        store.append_audit(entry(number))
    with (tmp_path / AUDIT_FILE).open("a", encoding="utf-8") as audit:
        audit.write('{"who": "ops", "act')

    assert store.read_audit(2) == [entry(1), entry(2)]


def test_an_entry_after_a_torn_line_is_kept(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.append_audit(entry(0))
    with (tmp_path / AUDIT_FILE).open("a", encoding="utf-8") as audit:
        audit.write('{"who": "ops", "act')  # the process died here; it restarts and goes on

    store.append_audit(entry(1))

    assert store.read_audit(10) == [entry(0), entry(1)]


def test_audit_entries_keep_unicode_and_order_their_keys(tmp_path: Path) -> None:
    store = StateStore(tmp_path)

    store.append_audit({"who": "zoë", "action": "set", "old": None, "new": {"b": 1, "a": 2}})

    line = (tmp_path / AUDIT_FILE).read_text(encoding="utf-8")
    assert line.endswith("\n")
    assert line.index('"action"') < line.index('"new"') < line.index('"old"') < line.index('"who"')
    assert store.read_audit(1) == [
        {"who": "zoë", "action": "set", "old": None, "new": {"b": 1, "a": 2}}
    ]
