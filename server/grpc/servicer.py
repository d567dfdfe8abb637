"""The gRPC front end: GRPCInferenceService on grpc.aio, translating to and from the data plane."""

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from turnout.errors import TurnoutError
from turnout.protos import inference_pb2 as pb
from turnout.protos import inference_pb2_grpc as pb_grpc
from turnout.server.dataplane import DataPlane
from turnout.server.grpc.codec import (
    config_message,
    decode_request,
    encode_response,
    metadata_message,
    statistics_message,
)
from turnout.server.grpc.errors import abort
from turnout.server.grpc.registration import refuse_malformed
from turnout.server.model_views import config_view, metadata_view
from turnout.server.tensors import RequestLimits

log = logging.getLogger(__name__)

ROUTING_KEY_METADATA = "x-routing-key"
STREAM_INFLIGHT = 256
_Reply = TypeVar("_Reply")


class _StreamEnd(enum.Enum):
    """Why a stream's reading ended."""

    CLOSED = "closed"
    MALFORMED = "malformed"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Serves the V2 RPCs and Triton's model configuration over one data plane."""

    def __init__(self, plane: DataPlane, limits: RequestLimits) -> None:
        self._plane = plane
        self._limits = limits

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.is_ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return await self._answer(
            context,
            lambda: pb.ModelReadyResponse(
                ready=self._plane.model_ready(request.name, request.version or None)
            ),
        )

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        info = self._plane.info
        return pb.ServerMetadataResponse(
            name=info.name, version=info.version, extensions=info.extensions
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        def view() -> pb.ModelMetadataResponse:
            entry = self._plane.version_entry(request.name, request.version or None)
            versions = self._plane.repository.versions(request.name)
            return metadata_message(metadata_view(request.name, versions, entry))

        return await self._answer(context, view)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        def view() -> pb.ModelConfigResponse:
            entry = self._plane.version_entry(request.name, request.version or None)
            return config_message(config_view(request.name, entry))

        return await self._answer(context, view)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return await self._answer(
            context,
            lambda: statistics_message(
                self._plane.statistics(request.name or None, request.version or None)
            ),
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            return await self._infer(request, context.time_remaining(), _routing_key(context))
        except TurnoutError as error:
            await abort(context, error)
        except Exception as error:
            await abort(context, self._plane.internal_error(error, request.id))

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Triton's streaming extension: requests on one stream run concurrently (up to
        STREAM_INFLIGHT at a time; reading pauses beyond that) and each answer is sent as soon as
        it is ready, matched to its request by id. A failed request gets an error message on the
        stream, which stays open; bytes that are not a request end it with INVALID_ARGUMENT once
        the requests before them are answered.

        Messages are read and written through the context: the refusal of undecodable bytes
        must come from here, after those answers, not from inside an iterator."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | _StreamEnd] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_INFLIGHT)
        running: set[asyncio.Task[None]] = set()
        routing_key = _routing_key(context)

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                response = await self._infer(request, context.time_remaining(), routing_key)
            except TurnoutError as error:
                answers.put_nowait(_stream_error(request, error.message))
            except Exception as error:
                internal = self._plane.internal_error(error, request.id)
                answers.put_nowait(_stream_error(request, internal.message))
            else:
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
            finally:
                slots.release()

        async def read() -> None:
            end = _StreamEnd.CLOSED
            try:
                while (request := await context.read()) is not grpc.aio.EOF:
                    if request is None:  # bytes that did not parse (see registration)
                        end = _StreamEnd.MALFORMED
                        break
                    await slots.acquire()
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*running)
            finally:
                answers.put_nowait(end)

        reader = asyncio.create_task(read())
        try:
            while not isinstance(message := await answers.get(), _StreamEnd):
                await context.write(message)
            await reader
            if message is _StreamEnd.MALFORMED:
                await refuse_malformed(context)
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _infer(
        self, request: pb.ModelInferRequest, remaining_s: float | None, routing_key: str | None
    ) -> pb.ModelInferResponse:
        with self._plane.request("grpc", request.model_name) as scope:
            inference = decode_request(request, remaining_s, routing_key, self._limits)
            response = await self._plane.infer(inference, scope)
            return encode_response(response, response.request_id)

    async def _answer(
        self, context: grpc.aio.ServicerContext, build: Callable[[], _Reply]
    ) -> _Reply:
        try:
            return build()
        except TurnoutError as error:
            await abort(context, error)


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _routing_key(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None
