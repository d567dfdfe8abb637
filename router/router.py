"""The router: resolves an endpoint (and an optional pinned version) to a model version and runs
the request there."""

from turnout.models.repository import ModelRepository
from turnout.models.types import ModelRequest
from turnout.router.types import InferenceRequest, InferenceResponse


class Router:
    """Routes each endpoint to its model's highest version; a pinned version bypasses the route."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository
        self._routes = {name: repository.versions(name)[-1] for name in repository.names()}

    def resolve(self, endpoint: str, version: str | None) -> str:
        """The version that serves ``endpoint``; raises ModelNotFound for unknown names."""
        if version:
            self._repository.entry(endpoint, version)
            return version
        self._repository.versions(endpoint)
        return self._routes[endpoint]

    def choose(self, request: InferenceRequest) -> str:
        """The version that serves ``request``: its pin, else its endpoint's route."""
        return self.resolve(request.endpoint, request.version)

    async def run(self, request: InferenceRequest, version: str) -> InferenceResponse:
        """Run the request on ``version`` of its endpoint's model."""
        runner = self._repository.runner(request.endpoint, version)
        response = await runner.infer(
            ModelRequest(request.inputs, request.requested_outputs, request.deadline)
        )
        return InferenceResponse(request.endpoint, version, response.outputs, response.stats)
