"""The HTTP front end: every V2 REST endpoint on starlette, translating to and from the data plane
and never deciding anything itself."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive

from turnout.errors import TurnoutError
from turnout.server.dataplane import DataPlane
from turnout.server.http.admin import OpsEndpoints
from turnout.server.http.errors import error_response, json_error
from turnout.server.http.infer import InferEndpoint, Scope, Send, infer_path
from turnout.server.model_views import config_view, metadata_view
from turnout.server.tensors import RequestLimits

log = logging.getLogger(__name__)

_JSON = "application/json"
Handler = Callable[[Request], Awaitable[Response]]


def _json(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type=_JSON)


class HttpFrontEnd:
    """Builds the starlette application over a data plane."""

    def __init__(
        self,
        plane: DataPlane,
        max_request_bytes: int,
        limits: RequestLimits,
        ops: OpsEndpoints,
    ) -> None:
        self._plane = plane
        self._max_request_bytes = max_request_bytes
        self._limits = limits
        self._ops = ops

    def app(self, with_admin: bool = True) -> ASGIApp:
        """The ASGI application: the whole API, or all but the admin and repository routes
        when those are served on a listener of their own (``admin_app``)."""
        infer = InferEndpoint(self._plane, self._max_request_bytes, self._limits)
        model = "/v2/models/{model}"
        version = "/v2/models/{model}/versions/{version}"
        routes = [
            Route(f"{model}/infer", infer, methods=["POST"]),
            Route(f"{version}/infer", infer, methods=["POST"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/models/stats", self._guarded(self.statistics), methods=["GET"]),
            Route(model, self._guarded(self.model_metadata), methods=["GET"]),
            Route(version, self._guarded(self.model_metadata), methods=["GET"]),
            Route(f"{model}/ready", self._guarded(self.model_ready), methods=["GET"]),
            Route(f"{version}/ready", self._guarded(self.model_ready), methods=["GET"]),
            Route(f"{model}/config", self._guarded(self.model_config), methods=["GET"]),
            Route(f"{version}/config", self._guarded(self.model_config), methods=["GET"]),
            Route(f"{model}/stats", self._guarded(self.statistics), methods=["GET"]),
            Route(f"{version}/stats", self._guarded(self.statistics), methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            *self._ops.public_routes(),
            *(self._ops.admin_routes() if with_admin else []),
        ]
        return _InferFirst(infer, self._starlette(routes))

    def admin_app(self) -> ASGIApp:
        """The admin and repository API alone, for a listener of its own."""
        return self._starlette(self._ops.admin_routes())

    def _starlette(self, routes: list[Route]) -> Starlette:
        return Starlette(
            routes=routes,
            exception_handlers={HTTPException: _http_exception, Exception: self._unexpected},
        )

    async def live(self, request: Request) -> Response:
        """``GET /v2/health/live``: 200 while the process runs."""
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        """``GET /v2/health/ready``: 200 when every model is loaded and the server not draining."""
        ready = self._plane.is_ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        """``GET /v2``: name, version and protocol extensions."""
        info = self._plane.info
        return _json(
            {"name": info.name, "version": info.version, "extensions": list(info.extensions)}
        )

    async def model_metadata(self, request: Request) -> Response:
        """``GET /v2/models/{m}[/versions/{v}]``."""
        endpoint, version = _model_and_version(request)
        entry = self._plane.version_entry(endpoint, version)
        return _json(metadata_view(endpoint, self._plane.repository.versions(endpoint), entry))

    async def model_ready(self, request: Request) -> Response:
        """``GET …/ready``: 200 when the version is ready, else 503."""
        endpoint, version = _model_and_version(request)
        ready = self._plane.model_ready(endpoint, version)
        return _json({"name": endpoint, "ready": ready}, 200 if ready else 503)

    async def model_config(self, request: Request) -> Response:
        """``GET …/config``: Triton's model configuration."""
        endpoint, version = _model_and_version(request)
        return _json(config_view(endpoint, self._plane.version_entry(endpoint, version)))

    async def statistics(self, request: Request) -> Response:
        """``GET /v2/models[/{m}[/versions/{v}]]/stats``: Triton's statistics extension."""
        endpoint = request.path_params.get("model")
        version = request.path_params.get("version")
        return _json({"model_stats": self._plane.statistics(endpoint, version)})

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics`` in the Prometheus text format."""
        self._plane.publish_model_states()
        return Response(
            generate_latest(self._plane.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except TurnoutError as error:
                return error_response(error)

        return guarded

    async def _unexpected(self, request: Request, error: Exception) -> Response:
        return error_response(self._plane.internal_error(error, ""))


def _model_and_version(request: Request) -> tuple[str, str | None]:
    return request.path_params["model"], request.path_params.get("version")


async def _http_exception(request: Request, error: Exception) -> Response:
    if not isinstance(error, HTTPException):
        raise error
    return json_error(error.status_code, error.detail, dict(error.headers or {}))


class _InferFirst:
    """Sends ``POST …/infer`` straight to the inference endpoint and everything else through
    starlette's router (which also answers the infer paths' other methods with 405)."""

    def __init__(self, infer: InferEndpoint, api: Starlette) -> None:
        self._infer = infer
        self._api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and infer_path(scope["path"]):
            await self._infer(scope, receive, send)
        else:
            await self._api(scope, receive, send)
