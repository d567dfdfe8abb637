"""Running a benchmark's server: the block starts once the server is ready, in the folder asked
for, and the server is gone when the block ends; a server that exits first is an error."""

import os
import sys
from pathlib import Path

import pytest

from turnout.loadtests.harness import served_when

# Announces itself in its working folder with its pid, then waits to be stopped.
SERVER = (
    "import os, pathlib, time; pathlib.Path('ready').write_text(str(os.getpid())); time.sleep(600)"
)


def test_a_server_runs_in_its_folder_from_ready_until_the_block_ends(tmp_path: Path) -> None:
    ready = tmp_path / "ready"

    def announced() -> bool:  # the file exists a moment before the pid is written into it
        return ready.exists() and ready.read_text() != ""

    with served_when([sys.executable, "-c", SERVER], announced, cwd=tmp_path):
        pid = int(ready.read_text())
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_server_that_exits_before_it_is_ready_did_not_start(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="did not start"),
        served_when([sys.executable, "-c", "pass"], (tmp_path / "ready").exists),
    ):
        pytest.fail("the block ran")
