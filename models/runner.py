"""The runner of one model version: validates a request, waits for a free instance and runs it."""

import asyncio
import logging
import time

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from turnout.errors import DeadlineExceeded, InvalidInput, quoted
from turnout.models.instance import Feed, OrtInstance, RunResult, completion_for
from turnout.models.types import ModelRequest, ModelResponse, ModelSignature, Placement, RunStats
from turnout.models.validation import validate_request

log = logging.getLogger(__name__)


class ModelRunner:
    """Serves one model version on its worker instances.

    Each instance runs one inference at a time; a request waits for the first idle instance.
    """

    def __init__(
        self, signature: ModelSignature, placement: Placement, instances: list[OrtInstance]
    ) -> None:
        self.signature = signature
        self.placement = placement
        self._instances = instances
        self._idle: asyncio.Queue[OrtInstance] = asyncio.Queue()
        for instance in instances:
            self._idle.put_nowait(instance)
        self._all_outputs = [spec.name for spec in signature.outputs]
        self._bytes_inputs = {spec.name for spec in signature.inputs if spec.datatype.is_bytes}

    async def infer(self, request: ModelRequest) -> ModelResponse:
        """Run ``request``; raises InvalidInput before running when it does not fit the model."""
        validate_request(self.signature, request)
        feed = self._feed(request.inputs)
        names = list(request.requested_outputs or self._all_outputs)
        queued = time.perf_counter()
        instance = await self._acquire(request.deadline)
        queue_seconds = time.perf_counter() - queued
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RunResult] = loop.create_future()
        instance.submit(
            feed, names, completion_for(loop, future, lambda: self._idle.put_nowait(instance))
        )
        try:
            outputs, seconds = await future
        except (OrtInvalidArgument, OrtFail) as exc:
            # Validation already matched names, types and shapes, so what ONNX Runtime still
            # refuses (mismatched dimensions between inputs, an index out of range) comes from
            # the values sent.
            log.debug("%s: ONNX Runtime refused the input: %s", self.signature.name, exc)
            raise InvalidInput(
                f"model {quoted(self.signature.name)} version {self.signature.version} "
                "could not run on this input"
            ) from exc
        if len(outputs) != len(names):
            raise RuntimeError(f"ONNX Runtime returned {len(outputs)} outputs for {len(names)}")
        stats = RunStats(self._rows(request), queue_seconds, seconds)
        return ModelResponse(dict(zip(names, outputs, strict=True)), stats)

    def _rows(self, request: ModelRequest) -> int:
        if self.signature.max_batch_size == 0 or not request.inputs:
            return 1
        return int(next(iter(request.inputs.values())).shape[0])

    async def _acquire(self, deadline: float | None) -> OrtInstance:
        if deadline is not None and deadline <= time.monotonic():
            raise self._expired()
        if not self._idle.empty():
            return self._idle.get_nowait()
        if deadline is None:
            return await self._idle.get()
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await self._idle.get()
        except TimeoutError:
            raise self._expired() from None

    def _expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"model {quoted(self.signature.name)} version {self.signature.version}: "
            "the request's deadline passed before it could run"
        )

    def _feed(self, inputs: dict[str, np.ndarray]) -> Feed:
        """What ONNX Runtime is given: text for string inputs, native byte order throughout
        (it reads raw memory, and validation accepts either order)."""
        feed: Feed = inputs
        for name, array in inputs.items():
            if name in self._bytes_inputs:
                converted = _as_text(name, array)
            elif not array.dtype.isnative:
                converted = array.astype(array.dtype.newbyteorder("="))
            else:
                continue
            if feed is inputs:
                feed = dict(inputs)
            feed[name] = converted
        return feed

    def warm_up(self) -> None:
        """Run every instance once on zeros (blocking; called while loading)."""
        feed: Feed = {
            spec.name: _zeros(spec.shape, spec.datatype.dtype, spec.datatype.is_bytes)
            for spec in self.signature.inputs
        }
        for instance in self._instances:
            instance.run_now(feed, self._all_outputs)

    def close(self) -> None:
        """Let queued runs finish, then stop the instances' threads."""
        for instance in self._instances:
            instance.close()


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX string tensors hold text: decode each BYTES element as UTF-8."""
    flat = array.reshape(-1)
    text = np.empty(flat.shape, dtype=object)
    try:
        for i, element in enumerate(flat):
            text[i] = element.decode() if isinstance(element, bytes) else str(element)
    except UnicodeDecodeError:
        raise InvalidInput(
            f"input {quoted(name)}: element {i} is not valid UTF-8, which ONNX string tensors need"
        ) from None
    return text.reshape(array.shape)


def _zeros(shape: tuple[int, ...], dtype: np.dtype[np.generic], is_bytes: bool) -> np.ndarray:
    concrete = tuple(1 if dim < 0 else dim for dim in shape)
    if is_bytes:
        return np.full(concrete, "", dtype=object)
    return np.zeros(concrete, dtype=dtype)
