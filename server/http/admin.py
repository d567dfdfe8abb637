"""The ops surface over HTTP: the admin API under /admin/ (routes, promote, rollback, A/B
report, audit), the model repository API and the feedback endpoint. Every admin and repository
call needs the bearer token; mutating calls from a browser origin not allowed by config are
refused."""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from turnout.errors import (
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    TurnoutError,
    quoted,
)
from turnout.server.admin_auth import AdminTokens
from turnout.server.dataplane import DataPlane
from turnout.server.http.body import read_body
from turnout.server.http.errors import error_response
from turnout.server.repository_mode import version_in_root

MAX_ADMIN_BODY = 1 << 20
AUDIT_LIMIT = 1000
Handler = Callable[[Request], Awaitable[Response]]


def _json(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")


class OpsEndpoints:
    """Builds the admin, repository and feedback routes."""

    def __init__(
        self,
        plane: DataPlane,
        tokens: AdminTokens | None,
        allowed_origins: list[str],
        model_root: Path | None,
    ) -> None:
        self._plane = plane
        self._tokens = tokens
        self._allowed_origins = set(allowed_origins)
        self._model_root = model_root

    def public_routes(self) -> list[Route]:
        """The routes every client may call: feedback."""
        return [Route("/v2/models/{model}/feedback", self._open(self.feedback), methods=["POST"])]

    def admin_routes(self) -> list[Route]:
        """The admin and repository routes; none when no token is configured."""
        if self._tokens is None:
            return []
        route = "/admin/routes/{endpoint}"
        repository = "/v2/repository/models/{model}"
        return [
            Route("/admin/routes", self._admin(self.list_routes), methods=["GET"]),
            Route(route, self._admin(self.get_route), methods=["GET"]),
            Route(route, self._admin(self.set_route), methods=["PUT"]),
            Route(f"{route}/promote", self._admin(self.promote), methods=["POST"]),
            Route(f"{route}/rollback", self._admin(self.rollback), methods=["POST"]),
            Route(f"{route}/report", self._admin(self.report), methods=["GET"]),
            Route("/admin/audit", self._admin(self.audit), methods=["GET"]),
            Route("/v2/repository/index", self._admin(self.index), methods=["POST"]),
            Route(f"{repository}/load", self._admin(self.load), methods=["POST"]),
            Route(f"{repository}/unload", self._admin(self.unload), methods=["POST"]),
        ]

    async def feedback(self, request: Request, who: str) -> Response:
        """``POST /v2/models/{endpoint}/feedback`` with ``{"request_id": …, "reward": …}``."""
        body = await _body(request)
        request_id, reward = body.get("request_id"), body.get("reward")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInput("request_id must be a non-empty string")
        if not isinstance(reward, int | float) or isinstance(reward, bool):
            raise InvalidInput("reward must be a number")
        endpoint = request.path_params["model"]
        version = self._plane.router.feedback(endpoint, request_id, float(reward))
        return _json({"model_name": endpoint, "model_version": version, "request_id": request_id})

    async def list_routes(self, request: Request, who: str) -> Response:
        """``GET /admin/routes``."""
        return _json({"routes": self._plane.router.describe_all()})

    async def get_route(self, request: Request, who: str) -> Response:
        """``GET /admin/routes/{endpoint}``: the route and its live state."""
        return _json(self._plane.router.describe(request.path_params["endpoint"]))

    async def set_route(self, request: Request, who: str) -> Response:
        """``PUT /admin/routes/{endpoint}``: replace the route."""
        document = await _body(request)
        return _json(
            await self._plane.router.set_route(request.path_params["endpoint"], document, who)
        )

    async def promote(self, request: Request, who: str) -> Response:
        """``POST /admin/routes/{endpoint}/promote``."""
        return _json(await self._plane.router.promote(request.path_params["endpoint"], who))

    async def rollback(self, request: Request, who: str) -> Response:
        """``POST /admin/routes/{endpoint}/rollback``."""
        return _json(await self._plane.router.rollback(request.path_params["endpoint"], who))

    async def report(self, request: Request, who: str) -> Response:
        """``GET /admin/routes/{endpoint}/report``: the A/B readout."""
        return _json(self._plane.router.report(request.path_params["endpoint"]))

    async def audit(self, request: Request, who: str) -> Response:
        """``GET /admin/audit[?limit=N]``: the latest changes, oldest first."""
        limit = request.query_params.get("limit", str(AUDIT_LIMIT))
        if not (limit.isascii() and limit.isdigit()) or not 0 < int(limit) <= AUDIT_LIMIT:
            raise InvalidInput(f"limit must be a whole number from 1 to {AUDIT_LIMIT}")
        return _json({"entries": await self._plane.router.audit(int(limit))})

    async def index(self, request: Request, who: str) -> Response:
        """``POST /v2/repository/index``: every version and its state."""
        return _json(self._plane.repository_index())

    async def load(self, request: Request, who: str) -> Response:
        """``POST /v2/repository/models/{m}/load`` with ``{"parameters": {"version": "N"}}``:
        load ``<model root>/<m>/<N>/model.onnx`` beside the live versions."""
        if self._model_root is None:
            raise InvalidInput("loading needs a model root (model_root in config)")
        model = request.path_params["model"]
        version = _version_parameter(await _body(request))
        entry = version_in_root(self._model_root, model, version)
        return _json(await self._plane.load_version(entry.spec(), entry.monitoring, who))

    async def unload(self, request: Request, who: str) -> Response:
        """``POST /v2/repository/models/{m}/unload`` with ``{"parameters": {"version": "N"}}``."""
        model = request.path_params["model"]
        version = _version_parameter(await _body(request))
        return _json(await self._plane.unload_version(model, version, who))

    def _admin(self, handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
        tokens = self._tokens

        async def guarded(request: Request) -> Response:
            try:
                if tokens is None:
                    raise ModelNotFound("the admin API is off")
                who = tokens.who(request.headers.get("authorization"))
                self._check_origin(request)
                return await handler(request, who)
            except TurnoutError as error:
                return error_response(error)

        return guarded

    def _open(self, handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
        async def answered(request: Request) -> Response:
            try:
                return await handler(request, "")
            except TurnoutError as error:
                return error_response(error)

        return answered

    def _check_origin(self, request: Request) -> None:
        origin = request.headers.get("origin")
        reads_only = request.method == "GET" or request.url.path == "/v2/repository/index"
        if not reads_only and origin is not None and origin not in self._allowed_origins:
            raise PermissionDenied(f"admin changes from origin {quoted(origin)} are refused")


async def _body(request: Request) -> dict[str, Any]:
    body = await read_body(request.receive, request.headers, MAX_ADMIN_BODY)
    if not body:
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"malformed JSON: {error.msg} at position {error.pos}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the body must be a JSON object")
    return document


def _version_parameter(body: dict[str, Any]) -> str:
    parameters = body.get("parameters", {})
    version = parameters.get("version") if isinstance(parameters, dict) else None
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version:
        raise InvalidInput('give the version as {"parameters": {"version": "N"}}')
    return version
