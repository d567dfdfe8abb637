"""Registering a generated gRPC service so that a request whose bytes do not parse as its message
is refused with INVALID_ARGUMENT. Left to grpc, a deserializer that raises ends the call with
UNKNOWN, a message naming protobuf's exception class, and a traceback in the server's log."""

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

Handlers = dict[str, Any]


class _Registrar:
    """Stands in for the server while generated code registers a service; keeps its handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: Handlers = {}

    def add_generic_rpc_handlers(self, handlers: tuple[Any, ...]) -> None:
        """The generated code registers the same handlers both ways; one is enough here."""

    def add_registered_method_handlers(self, service: str, handlers: Handlers) -> None:
        self.service = service
        self.handlers = handlers


def add_service(
    server: grpc.aio.Server, add_to_server: Callable[[Any, Any], None], servicer: object
) -> None:
    """Register ``servicer`` with the generated ``add_…_to_server`` function, every method
    refusing malformed request bytes with INVALID_ARGUMENT."""
    registrar = _Registrar()
    add_to_server(servicer, registrar)
    handlers = {name: _refusing_malformed(h) for name, h in registrar.handlers.items()}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(registrar.service, handlers),)
    )
    server.add_registered_method_handlers(registrar.service, handlers)


def _refusing_malformed(handler: Any) -> Any:
    parse = handler.request_deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return None  # the method answers INVALID_ARGUMENT

    if handler.request_streaming and handler.response_streaming:
        # A streaming method reads its own messages and calls refuse_malformed on a None, after
        # answering the requests before it.
        return handler._replace(request_deserializer=deserialize)
    if not handler.request_streaming and not handler.response_streaming:
        return handler._replace(
            request_deserializer=deserialize,
            unary_unary=_checked_unary(handler.unary_unary),
        )
    raise ValueError("only unary and bidirectional-streaming methods are served")


async def refuse_malformed(context: grpc.aio.ServicerContext) -> None:
    """End the call: its request bytes did not parse."""
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid protobuf message"
    )


def _checked_unary(behaviour: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is None:
            await refuse_malformed(context)
        return await behaviour(request, context)

    return unary
