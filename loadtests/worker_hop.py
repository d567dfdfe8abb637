"""What it costs to hand a model run to a worker thread (how Turnout runs ONNX Runtime sessions)
versus to a worker process (what would let a crashed session take down only its worker), from
an asyncio event loop as the server does, on the demo's MLP at batch 1 and a larger batch.

    python -m turnout.loadtests.worker_hop [--calls 3000] [--rounds 5]

Three ways to run the same session, interleaved round by round on the same machine:
- ``direct``: session.run on the event loop (the floor: no hand-off at all);
- ``thread``: Turnout's OrtInstance (a dedicated thread; the answer comes back through
  call_soon_threadsafe);
- ``process``: a worker process owning its own session, fed over a pipe (the inputs and outputs
  pickled, protocol 5), the answer awaited through the loop's reader on the pipe.
"""

import argparse
import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import onnxruntime as ort

from turnout.loadtests.harness import machine, write_demo_model
from turnout.models.instance import OrtInstance, RunResult
from turnout.models.providers import CPU
from turnout.models.session import SessionSettings, create_session
from turnout.server.demo import FEATURES

Feed = dict[str, np.ndarray]
Call = Callable[[Feed], Awaitable[object]]
SETTINGS = SessionSettings(intra_op_threads=1)


def _session(model: Path) -> ort.InferenceSession:
    return create_session(model, SETTINGS, [(CPU, {})], 1)


def _serve_worker(model: str, connection: Connection) -> None:
    """The worker process: run each feed that arrives and send the outputs back."""
    session = _session(Path(model))
    while (feed := connection.recv()) is not None:
        connection.send(session.run(None, feed))


class ProcessWorker:
    """A session in a worker process, called from the event loop."""

    def __init__(self, model: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        self._process = context.Process(target=_serve_worker, args=(str(model), theirs))
        self._process.start()

    async def __call__(self, feed: Feed) -> object:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[object] = loop.create_future()
        descriptor = self._connection.fileno()
        loop.add_reader(descriptor, lambda: answered.set_result(self._connection.recv()))
        try:
            self._connection.send(feed)
            return await answered
        finally:
            loop.remove_reader(descriptor)

    def close(self) -> None:
        self._connection.send(None)
        self._process.join()


def thread_call(instance: OrtInstance) -> Call:
    async def call(feed: Feed) -> object:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[RunResult | None] = loop.create_future()

        def done(result: RunResult | None, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(answered.set_result, result)

        instance.submit(feed, ["OUTPUT0", "LABEL"], done)
        return await answered

    return call


def direct_call(session: ort.InferenceSession) -> Call:
    async def call(feed: Feed) -> object:
        return session.run(None, feed)

    return call


async def per_call_us(call: Call, feed: Feed, calls: int) -> float:
    """Mean microseconds per call, one call at a time."""
    for _ in range(calls // 10):
        await call(feed)
    started = time.perf_counter()
    for _ in range(calls):
        await call(feed)
    return (time.perf_counter() - started) / calls * 1e6


async def measure(model: Path, calls: int, rounds: int, batch: int) -> dict[str, list[float]]:
    feed = {"INPUT0": np.random.default_rng(0).standard_normal((batch, FEATURES), np.float32)}
    instance = OrtInstance(_session(model), "ort-hop-0")
    worker = ProcessWorker(model)
    ways: dict[str, Call] = {
        "direct": direct_call(_session(model)),
        "thread": thread_call(instance),
        "process": worker,
    }
    figures: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(rounds):
            for name, call in ways.items():
                figures[name].append(await per_call_us(call, feed, calls))
    finally:
        instance.close()
        worker.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per way per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    arguments = parser.parse_args()
    print(f"{machine()}; {datetime.now(UTC):%Y-%m-%d}")
    with TemporaryDirectory() as work:
        model = write_demo_model(Path(work))
        for batch in arguments.batches:
            figures = asyncio.run(measure(model, arguments.calls, arguments.rounds, batch))
            medians = {name: statistics.median(values) for name, values in figures.items()}
            direct = medians["direct"]
            print(f"batch {batch}: median of {arguments.rounds} rounds, us per call")
            for name, value in medians.items():
                spread = f"{min(figures[name]):.0f}-{max(figures[name]):.0f}"
                print(
                    f"  {name:8} {value:7.1f} (rounds {spread}); hand-off "
                    f"{value - direct:+7.1f} us, {value / direct:.2f}x direct"
                )


if __name__ == "__main__":
    main()
