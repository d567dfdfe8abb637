"""Waiting on observable state with a deadline, instead of sleeping and hoping."""

import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")
POLL_INTERVAL_S = 0.01


def wait_for(probe: Callable[[], _T | None], what: str, timeout_s: float = 10.0) -> _T:
    """Call ``probe`` until it returns something other than None (or False); return that.

    Raises AssertionError naming ``what`` when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)
