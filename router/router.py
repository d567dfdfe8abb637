"""The router: one route per endpoint, chosen per request; changed at run time by ops (validated,
atomic, persisted, audited); and the guarded rollouts and bandit statistics kept current in the
background."""

import asyncio
import dataclasses
import datetime
import logging
import math
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

from turnout.errors import InvalidInput, ModelNotFound, quoted
from turnout.models.repository import ModelRepository
from turnout.models.types import ModelRequest, VersionState
from turnout.router.bandit import ArmStats, arm_stats
from turnout.router.feedback import ServedRequests
from turnout.router.ledger import TrafficLedger
from turnout.router.report import readout
from turnout.router.rollout import RolloutState
from turnout.router.routes import Route, build_route
from turnout.router.shadow import ShadowMirror
from turnout.router.specs import RouteConfig, parse_route
from turnout.router.state import StateStore
from turnout.router.types import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

HISTORY = 20  # earlier routes kept per endpoint for rollback
BACKGROUND_TICK_S = 0.5
BANDIT_SAVE_EVERY_S = 5.0
SERVER_SIDE_FAILURES = frozenset(
    {"internal_error", "overloaded", "deadline_exceeded", "model_not_ready", "unavailable"}
)


class Router:
    """Chooses the version of every request and keeps the routes."""

    def __init__(
        self,
        repository: ModelRepository,
        routes: Mapping[str, RouteConfig] | None = None,
        store: StateStore | None = None,
        feedback_ttl_s: float = 3600.0,
        feedback_max_entries: int = 100_000,
        rng: random.Random | None = None,
    ) -> None:
        self._repository = repository
        self._store = store
        self._rng = rng or random.Random()
        self._configured = dict(routes or {})
        self._history: dict[str, list[RouteConfig]] = {}
        self._lock = asyncio.Lock()
        self._bandits_dirty = False
        self.ledger = TrafficLedger()
        self.served = ServedRequests(feedback_ttl_s, feedback_max_entries)
        self.shadows = ShadowMirror(repository, self._rng)
        self.rollbacks: dict[str, int] = {}
        self._arm_stats: dict[str, dict[str, ArmStats]] = {}
        self._routes: dict[str, Route] = {}
        for name in repository.names():
            config = self._configured.get(name, RouteConfig(policy="latest"))
            self._routes[name] = self._build(name, config)

    # -- serving -----------------------------------------------------------------------------

    def resolve(self, endpoint: str, version: str | None) -> str:
        """The version that answers for ``endpoint`` (the pinned one, else the route's
        primary); raises ModelNotFound for unknown names."""
        if version:
            self._repository.entry(endpoint, version)
            return version
        return self._route(endpoint).primary()

    def choose(self, request: InferenceRequest) -> str:
        """The version that serves ``request``: its pin, else its endpoint's route. A request
        to a bandit route without an id gets one, so that a reward can name it."""
        if request.version:
            self._repository.entry(request.endpoint, request.version)
            return request.version
        route = self._route(request.endpoint)
        if route.bandit is not None and not request.request_id:
            request.request_id = uuid.uuid4().hex
        return route.choose(request.routing_key)

    async def run(self, request: InferenceRequest, version: str) -> InferenceResponse:
        """Run the request on ``version`` of its endpoint's model; mirror it to the route's
        shadow when it was routed rather than pinned."""
        runner = self._repository.runner(request.endpoint, version)
        response = await runner.infer(
            ModelRequest(request.inputs, request.requested_outputs, request.deadline)
        )
        if request.request_id:
            self.served.remember(request.endpoint, request.request_id, version)
        if not request.version:
            shadow = self._routes[request.endpoint].config.shadow
            if shadow is not None:
                self.shadows.mirror(shadow, request, version, response.outputs)
        return InferenceResponse(
            request.endpoint, version, response.outputs, response.stats, request.request_id
        )

    def finished(self, endpoint: str, version: str, seconds: float, status: str) -> None:
        """Account a request that ended with ``status`` (client mistakes are not the version's
        and are left out)."""
        if status == "success":
            self.ledger.served(endpoint, version, seconds, ok=True)
        elif status in SERVER_SIDE_FAILURES:
            self.ledger.served(endpoint, version, seconds, ok=False)

    def feedback(self, endpoint: str, request_id: str, reward: float) -> str:
        """Credit ``reward`` to the version that served ``request_id``; returns that version."""
        route = self._route(endpoint)
        if not math.isfinite(reward):
            raise InvalidInput("reward must be a finite number")
        if route.bandit is not None:
            route.bandit.check_reward(reward)
        version = self.served.claim(endpoint, request_id)
        if route.bandit is not None and version in route.bandit.arms:
            route.bandit.reward(version, reward)
            self._bandits_dirty = True
        self.ledger.account(endpoint, version).rewards.add(reward)
        return version

    # -- reading -------------------------------------------------------------------------------

    def describe(self, endpoint: str) -> dict[str, Any]:
        """The endpoint's route and its live state (bandit statistics, rollout progress)."""
        route = self._route(endpoint)
        described: dict[str, Any] = {"endpoint": endpoint, "route": route.config.document()}
        if route.bandit is not None:
            described["bandit"] = {
                arm: {**stats, "estimate": route.bandit.estimates()[arm]}
                for arm, stats in route.bandit.snapshot().items()
            }
        if route.rollout is not None:
            state = route.rollout.state
            described["rollout"] = {
                "status": state.status,
                "step": state.step,
                "percent": route.rollout.percent,
                "reason": state.reason,
            }
        if route.config.shadow is not None:
            counters = self.shadows.counters.get((endpoint, route.config.shadow.version))
            if counters is not None:
                described["shadow"] = {
                    "mirrored": counters.mirrored,
                    "dropped": counters.dropped,
                    "errors": counters.errors,
                    "compared": counters.compared,
                    "recent": list(counters.records)[-10:],
                }
        return described

    def describe_all(self) -> dict[str, dict[str, Any]]:
        """Every endpoint's route."""
        return {endpoint: self.describe(endpoint) for endpoint in sorted(self._routes)}

    def routes(self) -> Mapping[str, Route]:
        """The routes in force, by endpoint."""
        return self._routes

    def report(self, endpoint: str) -> dict[str, Any]:
        """The A/B readout of the versions the endpoint routes to (and any that served)."""
        route = self._route(endpoint)
        versions = route.config.versions() | {route.primary()}
        accounts = {
            version: self.ledger.account(endpoint, version)
            for version in versions
            if version in self._repository.versions(endpoint)
        }
        return readout(endpoint, accounts)

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        """The latest audit entries."""
        if self._store is None:
            return []
        return await asyncio.to_thread(self._store.read_audit, limit)

    def versions_in_use(self, endpoint: str) -> set[str]:
        """The versions the endpoint's route can send traffic to."""
        route = self._routes.get(endpoint)
        if route is None:
            return set()
        return route.config.versions() | (
            {route.latest} if route.config.policy == "latest" else set()
        )

    # -- changing ------------------------------------------------------------------------------

    async def set_route(self, endpoint: str, document: Any, who: str) -> dict[str, Any]:
        """Replace the endpoint's route after validating it; InvalidInput (nothing changed) when
        it is malformed or names versions that are not ready."""
        config = parse_route(document)
        async with self._lock:
            return await self._apply(endpoint, config, who, "set")

    async def promote(self, endpoint: str, who: str) -> dict[str, Any]:
        """Send all traffic to the route's candidate: blue-green swaps live and staged, canary
        gives the newest version everything, a rollout completes, a bandit settles on its best
        arm."""
        async with self._lock:
            route = self._route(endpoint)
            return await self._apply(endpoint, _promoted(route), who, "promote")

    async def rollback(self, endpoint: str, who: str) -> dict[str, Any]:
        """Undo: a running rollout is rolled back to its stable version; any other route goes
        back to the one before the last change."""
        async with self._lock:
            route = self._route(endpoint)
            if route.rollout is not None and route.rollout.state.status == "running":
                return await self._roll_back_rollout(endpoint, route, who, "rolled back by hand")
            history = self._history.get(endpoint, [])
            if not history:
                raise InvalidInput(f"endpoint {quoted(endpoint)} has no earlier route")
            return await self._apply(endpoint, history[-1], who, "rollback", undo=True)

    async def _apply(
        self, endpoint: str, config: RouteConfig, who: str, action: str, undo: bool = False
    ) -> dict[str, Any]:
        self._check_versions(endpoint, config)
        old = self._route(endpoint)
        route = self._build(endpoint, config)
        history = list(self._history.get(endpoint, []))
        if undo:
            history.pop()
        else:
            history = [*history, old.config][-HISTORY:]
        routes = {**self._routes, endpoint: route}
        await self._save(routes, {**self._history, endpoint: history})
        self._routes = routes
        self._history[endpoint] = history
        await self.audit_event(who, action, endpoint, old.config.document(), config.document())
        log.info("%s: route of %r is now %s", who, endpoint, config.document())
        return self.describe(endpoint)

    def _check_versions(self, endpoint: str, config: RouteConfig) -> None:
        known = self._repository.versions(endpoint)
        for field, version in config.named_versions():
            if version not in known:
                raise InvalidInput(
                    f"{field}: model {quoted(endpoint)} has no version {quoted(version)}"
                )
            if self._repository.entry(endpoint, version).state is not VersionState.READY:
                raise InvalidInput(
                    f"{field}: model {quoted(endpoint)} version {version} is not ready"
                )

    async def _roll_back_rollout(
        self, endpoint: str, route: Route, who: str, reason: str
    ) -> dict[str, Any]:
        rollout = route.rollout
        if rollout is None:
            raise RuntimeError("not a rollout route")
        rollout.state.status, rollout.state.reason = "rolled_back", reason
        self.rollbacks[endpoint] = self.rollbacks.get(endpoint, 0) + 1
        await self._save(self._routes, self._history)
        await self.audit_event(who, "rollback", endpoint, route.config.document(), None, reason)
        log.warning("rollout of %r rolled back: %s", endpoint, reason)
        return self.describe(endpoint)

    def refresh(self, endpoint: str) -> None:
        """Follow a version loaded or unloaded at run time: an endpoint's "latest" is the highest
        version now present (an endpoint whose model is gone loses its route)."""
        if not self._repository.has_model(endpoint):
            self._routes = {name: r for name, r in self._routes.items() if name != endpoint}
            return
        route = self._routes.get(endpoint)
        if route is None:
            self._route(endpoint)
            return
        state = route.rollout.state if route.rollout is not None else None
        self._routes = {**self._routes, endpoint: self._build(endpoint, route.config, state)}

    # -- background ----------------------------------------------------------------------------

    async def restore(self) -> None:
        """Re-apply what ops changed before the last stop on top of the config's routes, and
        the bandit statistics. Call once the models are loaded."""
        if self._store is None:
            return
        saved = await asyncio.to_thread(self._store.load_routes)
        bandits = await asyncio.to_thread(self._store.load_bandits)
        for endpoint in list(self._routes):
            try:
                self._restore(endpoint, saved.get(endpoint), bandits.get(endpoint))
            except (InvalidInput, ModelNotFound, KeyError, TypeError, ValueError) as error:
                log.error("saved state of %r not applied (%s); using the config's", endpoint, error)

    def _restore(self, endpoint: str, saved: Any, bandit: Any) -> None:
        if isinstance(bandit, dict):
            learned = self._arm_stats.setdefault(endpoint, {})
            for arm, document in bandit.items():
                learned[str(arm)] = arm_stats(document)
        if not isinstance(saved, dict):
            # Rebuilt so that a bandit route takes up the statistics just read.
            self._routes = {
                **self._routes,
                endpoint: self._build(endpoint, self._routes[endpoint].config),
            }
            return
        config = parse_route(saved["route"], endpoint)
        self._check_versions(endpoint, config)
        history = [parse_route(old, endpoint) for old in saved.get("history", [])]
        rollout_state = None
        if isinstance(saved.get("rollout"), dict):
            status = saved["rollout"]["status"]
            if status not in ("running", "completed", "rolled_back"):
                raise ValueError(f"unknown rollout status {status!r}")
            rollout_state = RolloutState(
                step=int(saved["rollout"]["step"]),
                status=status,
                reason=str(saved["rollout"].get("reason", "")),
            )
        self._history[endpoint] = history
        self._routes = {**self._routes, endpoint: self._build(endpoint, config, rollout_state)}

    async def run_background(self) -> None:
        """Judge rollouts and save bandit statistics, until cancelled."""
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(BACKGROUND_TICK_S)
            try:
                await self._judge_rollouts()
                if self._bandits_dirty and time.monotonic() - last_save >= BANDIT_SAVE_EVERY_S:
                    await self.save_bandits()
                    last_save = time.monotonic()
            except Exception:
                log.exception("router background step failed")

    async def save_bandits(self) -> None:
        """Write the bandit statistics now."""
        if self._store is None:
            return
        self._bandits_dirty = False
        snapshot = {
            endpoint: {arm: dataclasses.asdict(stats) for arm, stats in arms.items()}
            for endpoint, arms in self._arm_stats.items()
        }
        try:
            await asyncio.to_thread(self._store.save_bandits, snapshot)
        except BaseException:
            self._bandits_dirty = True
            raise

    async def _judge_rollouts(self) -> None:
        now = time.monotonic()
        for endpoint, route in list(self._routes.items()):
            rollout = route.rollout
            if rollout is None or rollout.state.status != "running":
                continue
            since = rollout.state.step_started
            canary = self.ledger.account(endpoint, rollout.canary).window(since)
            stable = self.ledger.account(endpoint, rollout.stable).window(since)
            async with self._lock:
                if self._routes.get(endpoint) is not route:
                    continue
                decision = rollout.evaluate(canary, stable, now)
                if decision == "rollback":
                    self.rollbacks[endpoint] = self.rollbacks.get(endpoint, 0) + 1
                    log.warning("rollout of %r rolled back: %s", endpoint, rollout.state.reason)
                elif decision is not None:
                    log.info("rollout of %r: %s to %g%%", endpoint, decision, rollout.percent)
                if decision is not None:
                    await self._save(self._routes, self._history)
                    await self.audit_event(
                        "rollout",
                        decision,
                        endpoint,
                        None,
                        {"percent": rollout.percent, "step": rollout.state.step},
                        rollout.state.reason,
                    )

    # -- helpers -------------------------------------------------------------------------------

    def _route(self, endpoint: str) -> Route:
        route = self._routes.get(endpoint)
        if route is None:
            self._repository.versions(endpoint)  # ModelNotFound for an unknown endpoint
            route = self._build(endpoint, RouteConfig(policy="latest"))
            self._routes = {**self._routes, endpoint: route}
        return route

    def _build(
        self, endpoint: str, config: RouteConfig, rollout_state: RolloutState | None = None
    ) -> Route:
        arms = self._arm_stats.setdefault(endpoint, {})
        return build_route(config, self._latest(endpoint), self._rng, arms, rollout_state)

    def _latest(self, endpoint: str) -> str:
        """The highest version that is ready (the highest of all while none is)."""
        versions = self._repository.versions(endpoint)
        ready = [
            version
            for version in versions
            if self._repository.entry(endpoint, version).state is VersionState.READY
        ]
        return (ready or versions)[-1]

    async def _save(
        self, routes: Mapping[str, Route], history: Mapping[str, list[RouteConfig]]
    ) -> None:
        if self._store is None:
            return
        document = {}
        for endpoint, route in routes.items():
            saved: dict[str, Any] = {
                "route": route.config.document(),
                "history": [old.document() for old in history.get(endpoint, [])],
            }
            if route.rollout is not None:
                state = route.rollout.state
                saved["rollout"] = {
                    "step": state.step,
                    "status": state.status,
                    "reason": state.reason,
                }
            document[endpoint] = saved
        await asyncio.to_thread(self._store.save_routes, document)

    async def audit_event(
        self,
        who: str,
        action: str,
        endpoint: str,
        old: dict[str, Any] | None,
        new: dict[str, Any] | None,
        reason: str = "",
    ) -> None:
        """Append a change to the audit log: when, who, what, and old → new."""
        if self._store is None:
            return
        entry: dict[str, Any] = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "who": who,
            "action": action,
            "endpoint": endpoint,
            "old": old,
            "new": new,
        }
        if reason:
            entry["reason"] = reason
        await asyncio.to_thread(self._store.append_audit, entry)


def _promoted(route: Route) -> RouteConfig:
    config = route.config
    if config.policy == "blue_green":
        if config.staged is None:
            raise InvalidInput("nothing is staged to promote")
        return RouteConfig(
            policy="blue_green", live=config.staged, staged=config.live, shadow=config.shadow
        )
    if config.policy == "canary" and config.weights:
        newest = max(config.weights, key=int)
        weights = {version: (100.0 if version == newest else 0.0) for version in config.weights}
        return RouteConfig(policy="canary", weights=weights, shadow=config.shadow)
    if config.policy == "rollout" and config.canary is not None:
        return RouteConfig(policy="fixed", version=config.canary, shadow=config.shadow)
    if config.policy == "bandit":
        return RouteConfig(policy="fixed", version=route.primary(), shadow=config.shadow)
    raise InvalidInput(f"a {config.policy} route has nothing to promote")
