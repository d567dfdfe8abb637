"""How far behind the event loop runs: the one sign of a saturated process that every protocol
shares. A request that arrives while the loop is late has already waited that long before
Python sees it, and serving it makes the requests behind it wait longer still; refusing it
costs a fraction of serving it, so the backlog drains and admitted requests keep a bounded
latency."""

import asyncio
import time

# Often enough to notice a backlog within a few hundredths of a second; each tick is one timer.
TICK_S = 0.02


class LoopLag:
    """Measures, once a tick, how late the event loop ran a timer it was given. ``seconds`` is
    the lesser lateness of the last two ticks: a backlog keeps every tick late, while one long
    callback (a huge body decoded, say) delays a single tick and is not saturation."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self.seconds = 0.0

    async def run(self) -> None:
        """Measure until cancelled."""
        previous = 0.0
        while True:
            due = time.monotonic() + self.tick_s
            await asyncio.sleep(self.tick_s)
            late = max(0.0, time.monotonic() - due)
            self.seconds = min(late, previous)
            previous = late
