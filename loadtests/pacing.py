"""Waking the event loop on time, for open-loop arrivals.

An open-loop request's latency runs from the moment it was due, so a load generator that wakes
late adds its own lateness to every request. uvloop's timers count whole milliseconds: a request
due at a fixed 300/s was sent about 0.12 ms late at the median and 0.6 ms at the 99th
percentile. On Linux a timerfd, armed for the exact moment and watched by the event loop like a
socket, wakes it 0.03-0.05 ms late (BENCHMARKS.md, issue 6); elsewhere the loop's timers do.
"""

import asyncio
import ctypes
import ctypes.util
import logging
import os
import sys
import time

log = logging.getLogger(__name__)

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _libc() -> ctypes.CDLL | None:
    """libc with timerfd, if this is Linux and perf_counter is CLOCK_MONOTONIC (the clock the
    timer is armed on)."""
    if sys.platform != "linux":
        return None
    if time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc if hasattr(libc, "timerfd_create") else None
    except OSError:
        return None


class Pacer:
    """Waits until moments on ``time.perf_counter``'s clock. One waiter at a time."""

    def __init__(self) -> None:
        self._libc = _libc()
        self._fd = -1
        self._waiter: asyncio.Future[None] | None = None
        if self._libc is not None:
            self._fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if self._fd < 0:
                log.info("no timerfd (errno %d): pacing on the event loop's timers",
                         ctypes.get_errno())  # fmt: skip
            else:
                asyncio.get_running_loop().add_reader(self._fd, self._fired)

    @property
    def precise(self) -> bool:
        """Whether a timerfd wakes the waits (else the event loop's timers)."""
        return self._fd >= 0

    async def until(self, moment: float) -> None:
        """Return at ``moment`` (a ``time.perf_counter()`` value), at once if it has passed."""
        delay = moment - time.perf_counter()
        if delay <= 0:
            return
        if self._fd < 0:
            await asyncio.sleep(delay)
            return
        assert self._libc is not None
        seconds = int(moment)
        when = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, int((moment - seconds) * 1e9)))
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(when), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def close(self) -> None:
        """Release the timer."""
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
