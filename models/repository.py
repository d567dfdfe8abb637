"""The model repository: every configured model version, its state, and its runner once loaded."""

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from turnout.errors import InvalidInput, ModelNotFound, ModelNotReady, quoted
from turnout.models.loader import VersionSpec, load_version
from turnout.models.runner import ModelRunner
from turnout.models.types import VersionState

log = logging.getLogger(__name__)


@dataclass(slots=True)
class VersionEntry:
    """One model version as the repository tracks it."""

    spec: VersionSpec
    state: VersionState = VersionState.LOADING
    reason: str = ""
    runner: ModelRunner | None = None

    @property
    def serving(self) -> bool:
        """Ready, with at least one instance (none while every one is being replaced)."""
        return (
            self.state is VersionState.READY
            and self.runner is not None
            and self.runner.ready_instances > 0
        )


def version_order(version: str) -> tuple[int, str]:
    """Sort key putting versions in numeric order."""
    return (int(version), version) if version.isascii() and version.isdigit() else (-1, version)


class ModelRepository:
    """Holds the model versions; loads them off the event loop and hands out their runners."""

    def __init__(self, specs: Iterable[VersionSpec]) -> None:
        self._models: dict[str, dict[str, VersionEntry]] = {}
        for spec in specs:
            self._models.setdefault(spec.name, {})[spec.version] = VersionEntry(spec)
        for name, versions in self._models.items():
            self._models[name] = dict(sorted(versions.items(), key=lambda kv: version_order(kv[0])))
        self._cpu_instances = max(1, sum(entry.spec.cpu_instances for entry in self.entries()))

    async def load_all(self) -> None:
        """Load every version in parallel; a version that fails is marked UNAVAILABLE with the
        reason, logged, and the others still load."""
        entries = [entry for versions in self._models.values() for entry in versions.values()]
        await asyncio.gather(*(self._load(entry) for entry in entries))

    async def _load(self, entry: VersionEntry) -> None:
        try:
            entry.runner = await asyncio.to_thread(load_version, entry.spec, self._cpu_instances)
        except Exception as exc:
            entry.state = VersionState.UNAVAILABLE
            entry.reason = "failed to load; the server log says why"
            log.error(
                "%s failed to load from %s: %s: %s",
                entry.spec.label,
                entry.spec.path,
                type(exc).__name__,
                exc,
            )
        else:
            entry.state = VersionState.READY

    async def load(self, spec: VersionSpec) -> VersionEntry:
        """Load a version beside the others at run time; it serves once loaded and warmed up.
        InvalidInput when that version is already present."""
        versions = self._models.get(spec.name, {})
        present = versions.get(spec.version)
        if present is not None and present.state is not VersionState.UNAVAILABLE:
            raise InvalidInput(
                f"model {quoted(spec.name)} version {spec.version} is already "
                f"{present.state.value.lower()}"
            )
        entry = VersionEntry(spec)
        versions = {**versions, spec.version: entry}
        self._models[spec.name] = dict(
            sorted(versions.items(), key=lambda kv: version_order(kv[0]))
        )
        await self._load(entry)
        return entry

    async def unload(self, name: str, version: str) -> None:
        """Stop serving a version: new requests are refused at once (ModelNotReady), those
        already queued or running finish, then its instances close and it is removed."""
        entry = self.entry(name, version)
        if entry.state is not VersionState.READY or entry.runner is None:
            raise InvalidInput(
                f"model {quoted(name)} version {version} is {entry.state.value.lower()}"
            )
        entry.state = VersionState.UNLOADING
        runner = entry.runner
        await runner.settle()
        await asyncio.to_thread(runner.close)
        entry.runner = None
        remaining = {v: e for v, e in self._models[name].items() if v != version}
        if remaining:
            self._models[name] = remaining
        else:
            del self._models[name]

    def has_model(self, name: str) -> bool:
        """Whether a model of that name is configured."""
        return name in self._models

    def names(self) -> list[str]:
        """Model names in config order."""
        return list(self._models)

    def versions(self, name: str) -> list[str]:
        """The model's versions, lowest first; raises ModelNotFound for an unknown model."""
        return list(self._versions(name))

    def entry(self, name: str, version: str) -> VersionEntry:
        """The version's entry; raises ModelNotFound when there is none."""
        entry = self._versions(name).get(version)
        if entry is None:
            raise ModelNotFound(f"model {quoted(name)} has no version {quoted(version)}")
        return entry

    def entries(self) -> list[VersionEntry]:
        """Every version's entry."""
        return [entry for versions in self._models.values() for entry in versions.values()]

    def runner(self, name: str, version: str) -> ModelRunner:
        """The runner of a ready version; raises ModelNotFound or ModelNotReady."""
        entry = self.entry(name, version)
        if entry.runner is None or entry.state is not VersionState.READY:
            detail = f" ({entry.reason})" if entry.reason else ""
            raise ModelNotReady(
                f"model {quoted(name)} version {version} is {entry.state.value.lower()}{detail}"
            )
        return entry.runner

    def is_ready(self) -> bool:
        """Whether every configured version is ready to serve."""
        return all(entry.serving for entry in self.entries())

    def close(self) -> None:
        """Stop every loaded version's instances (after their queued runs finish)."""
        for entry in self.entries():
            if entry.runner is not None:
                entry.state = VersionState.UNLOADING
                entry.runner.close()
                entry.runner = None

    def _versions(self, name: str) -> dict[str, VersionEntry]:
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"unknown model {quoted(name)}")
        return versions
