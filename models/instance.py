"""A worker instance: one ONNX Runtime session and the thread that runs it, one run at a time."""

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

Feed = dict[str, Any]
Outputs = list[np.ndarray]
RunResult = tuple[Outputs, float]
Completion = Callable[[RunResult | None, BaseException | None], None]
SessionFactory = Callable[[], ort.InferenceSession]


@dataclass(frozen=True, slots=True)
class Binding:
    """Where I/O binding puts a run's outputs: the instance's device (``cuda``) or ``cpu``."""

    device_type: Literal["cpu", "cuda"]
    device_id: int = 0


class OrtInstance:
    """Runs inferences on its session from a dedicated thread, so the event loop never blocks and
    the session is never entered by two threads at once.

    With a ``binding``, runs go through ONNX Runtime's I/O binding: inputs are bound from host
    memory (copied to the device once, by ONNX Runtime) and outputs allocated on the binding's
    device, then copied to the host in one step, instead of run()'s per-call allocations.

    ``new_session`` makes another session like this one's, for a ``replacement`` when this
    instance is abandoned.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        thread_name: str,
        binding: Binding | None = None,
        new_session: SessionFactory | None = None,
    ) -> None:
        self.session = session
        self.binding = binding
        self.thread_name = thread_name
        self.abandoned = False
        self._new_session = new_session
        self._run_options = ort.RunOptions()
        self._staging: dict[str, np.ndarray] = {}
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
        return self._run(feed, output_names)

    def staging(self, name: str, like: np.ndarray, rows: int) -> np.ndarray:
        """A reused array of ``rows`` rows shaped and typed like ``like``'s, to gather a batch
        into. Only valid until this instance's next run: call it while the instance is idle."""
        buffer = self._staging.get(name)
        if (
            buffer is None
            or buffer.dtype != like.dtype
            or buffer.shape[1:] != like.shape[1:]
            or buffer.shape[0] < rows
        ):
            capacity = max(rows, 2 * buffer.shape[0]) if buffer is not None else rows
            buffer = np.empty((capacity, *like.shape[1:]), dtype=like.dtype)
            self._staging[name] = buffer
        return buffer[:rows]

    def close(self) -> None:
        """Finish the queued runs, then stop the thread."""
        self._jobs.put(None)
        self._thread.join()

    def abandon(self) -> None:
        """Give up on the run in progress: ask ONNX Runtime to stop it (it checks between
        operators, so a single long operator still runs to its end) and let the thread end
        after it, without waiting. Its completion is still called; the caller ignores it."""
        self.abandoned = True
        self._run_options.terminate = True
        self._jobs.put(None)

    def replacement(self) -> "OrtInstance":
        """A new instance with a session of its own, made like this one's. Blocks (it loads the
        model); RuntimeError when this instance was not given a way to make sessions."""
        if self._new_session is None:
            raise RuntimeError(f"instance {self.thread_name} cannot be replaced")
        return OrtInstance(self._new_session(), self.thread_name, self.binding, self._new_session)

    def _run(self, feed: Feed, output_names: list[str]) -> Outputs:
        if self.binding is None:
            return list(self.session.run(output_names, feed, self._run_options))
        io = self.session.io_binding()
        for name, array in feed.items():
            io.bind_cpu_input(name, array)
        for name in output_names:
            io.bind_output(name, self.binding.device_type, self.binding.device_id)
        self.session.run_with_iobinding(io, self._run_options)
        return list(io.copy_outputs_to_cpu())

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            feed, output_names, done = job
            started = time.perf_counter()
            try:
                outputs = self._run(feed, output_names)
            except BaseException as exc:
                done(None, exc)
            else:
                done((outputs, time.perf_counter() - started), None)
