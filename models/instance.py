"""A worker instance: one ONNX Runtime session and the thread that runs it, one run at a time."""

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

Feed = dict[str, Any]
Outputs = list[np.ndarray]
RunResult = tuple[Outputs, float]
Completion = Callable[[RunResult | None, BaseException | None], None]


class OrtInstance:
    """Runs inferences on its session from a dedicated thread, so the event loop never blocks and
    the session is never entered by two threads at once."""

    def __init__(self, session: ort.InferenceSession, thread_name: str) -> None:
        self.session = session
        self._jobs: queue.SimpleQueue[tuple[Feed, list[str], Completion] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._work, name=thread_name, daemon=True)
        self._thread.start()

    def submit(self, feed: Feed, output_names: list[str], done: Completion) -> None:
        """Queue a run; ``done((outputs, seconds), error)`` is called on the instance's thread
        afterwards."""
        self._jobs.put((feed, output_names, done))

    def run_now(self, feed: Feed, output_names: list[str]) -> Outputs:
        """Run on the calling thread (used while loading, before the instance takes traffic)."""
        return list(self.session.run(output_names, feed))

    def close(self) -> None:
        """Finish the queued runs, then stop the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            feed, output_names, done = job
            started = time.perf_counter()
            try:
                outputs = list(self.session.run(output_names, feed))
            except BaseException as exc:
                done(None, exc)
            else:
                done((outputs, time.perf_counter() - started), None)


def completion_for(
    loop: asyncio.AbstractEventLoop,
    future: "asyncio.Future[RunResult]",
    release: Callable[[], None],
) -> Completion:
    """A completion that releases the instance and resolves ``future`` with one loop wake-up."""

    def finish(result: RunResult | None, error: BaseException | None) -> None:
        release()
        if future.done():  # the caller gave up (cancelled, deadline) while this ran
            return
        if result is None:
            future.set_exception(error or RuntimeError("run ended without a result"))
        else:
            future.set_result(result)

    def done(result: RunResult | None, error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(finish, result, error)
        except RuntimeError:  # the loop closed while this ran: nobody waits for the result
            return

    return done
