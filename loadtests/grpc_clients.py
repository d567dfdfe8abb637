"""What one gRPC call costs the load generator: its own channel (``grpc_channel``) against
grpc.aio, the same ModelInfer on the demo's MLP, one call at a time against one Turnout,
interleaved round by round.

    python -m turnout.loadtests.grpc_clients [--calls 3000] [--rounds 3]

For each client: the client process's CPU per call (the server runs in another process) and the
p50 from send to answer. Every call must come back OK.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import uvloop

from turnout.loadtests.clients import GrpcClient, Target, prepare
from turnout.loadtests.harness import (
    machine,
    sample_row,
    served,
    turnout_command,
    turnout_ports,
    write_demo_model,
)
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.server.demo import DEMO_MODEL, FEATURES

WARM_UP_CALLS = 200
Sender = Callable[[int], Awaitable[float]]  # one call; returns when its answer was whole


async def _measure(send: Sender, calls: int) -> tuple[float, float]:
    for number in range(WARM_UP_CALLS):
        await send(number)
    latencies = []
    cpu = time.process_time()
    for number in range(calls):
        sent = time.perf_counter()
        latencies.append(await send(number) - sent)
    cpu_per_call = (time.process_time() - cpu) / calls
    return cpu_per_call * 1e6, statistics.median(latencies) * 1e6


async def _with_channel(port: int, calls: int) -> tuple[float, float]:
    client = GrpcClient(Target("grpc", "127.0.0.1", port))
    request = prepare("grpc", DEMO_MODEL, [{"INPUT0": sample_row(FEATURES)}])[0]

    async def send(number: int) -> float:
        outcome = await client.infer(request, str(number), None)
        if not outcome.ok:
            raise RuntimeError(f"the load test's channel: {outcome.code}")
        return outcome.answered_at

    try:
        return await _measure(send, calls)
    finally:
        await client.close()


async def _with_grpc_aio(port: int, calls: int) -> tuple[float, float]:
    request = pb.ModelInferRequest(model_name=DEMO_MODEL)
    rows = sample_row(FEATURES)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=rows.shape)
    request.raw_input_contents.append(rows.tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer

        async def send(number: int) -> float:
            request.id = str(number)
            await infer(request, timeout=30)
            return time.perf_counter()

        return await _measure(send, calls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    clients = {"load test's channel": _with_channel, "grpc.aio": _with_grpc_aio}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        write_demo_model(work)
        ready = work / "ready"
        with served(turnout_command(work / "models", ready), ready):
            _, port = turnout_ports(ready)
            for _ in range(args.rounds):
                for name, client in clients.items():
                    figures[name].append(uvloop.run(client(port, args.calls)))
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')}, {machine()}; demo mlp, batch 1")
    print("\n| client | CPU µs per call | p50 µs | per round (CPU, p50) |\n|---|---|---|---|")
    for name, rounds in figures.items():
        cpu = statistics.median(figure[0] for figure in rounds)
        p50 = statistics.median(figure[1] for figure in rounds)
        each = ", ".join(f"{round_cpu:.0f}/{round_p50:.0f}" for round_cpu, round_p50 in rounds)
        print(f"| {name} | {cpu:.0f} | {p50:.0f} | {each} |")


if __name__ == "__main__":
    main()
