"""Turnout's Feedback service: rewards over gRPC, as ``POST /v2/models/{m}/feedback`` over
HTTP."""

import grpc

from turnout.errors import InvalidInput, TurnoutError
from turnout.protos import turnout_pb2 as pb
from turnout.protos import turnout_pb2_grpc as pb_grpc
from turnout.server.dataplane import DataPlane
from turnout.server.grpc.errors import abort


class FeedbackServicer(pb_grpc.FeedbackServicer):
    """Credits rewards to the versions that served requests."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def Reward(
        self, request: pb.RewardRequest, context: grpc.aio.ServicerContext
    ) -> pb.RewardResponse:
        try:
            if not request.request_id:
                raise InvalidInput("request_id must be a non-empty string")
            version = self._plane.router.feedback(
                request.model_name, request.request_id, request.reward
            )
        except TurnoutError as error:
            await abort(context, error)
        return pb.RewardResponse(
            model_name=request.model_name, model_version=version, request_id=request.request_id
        )
