"""Loading one model version: sessions on the chosen providers, signature, warm-up."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from turnout.models.instance import OrtInstance
from turnout.models.providers import CPU, Device, provider_chain, report_fallback
from turnout.models.runner import ModelRunner
from turnout.models.session import SessionSettings, create_session, read_signature
from turnout.models.types import Placement

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """Everything needed to load one model version."""

    name: str
    version: str
    path: Path
    device: Device = field(default_factory=lambda: Device("auto"))
    tensorrt: bool = False
    instance_count: int = 1
    session: SessionSettings = field(default_factory=SessionSettings)
    max_batch_size: int | None = None
    warmup: bool = True

    @property
    def label(self) -> str:
        """How logs name this version."""
        return f"model {self.name!r} version {self.version}"


def load_version(spec: VersionSpec) -> ModelRunner:
    """Create, inspect and warm up the version's instances. Blocks; call it off the event loop.

    Raises whatever ONNX Runtime raises for a model it cannot load, or UnsupportedModel.
    """
    requested = provider_chain(spec.device, spec.tensorrt, ort.get_available_providers())
    sessions = [
        create_session(spec.path, spec.session, requested, spec.instance_count)
        for _ in range(spec.instance_count)
    ]
    granted = tuple(sessions[0].get_providers())
    report_fallback(spec.label, requested, granted)
    signature = read_signature(sessions[0], spec.name, spec.version, spec.max_batch_size)
    on_gpu = granted[0] != CPU
    placement = Placement(
        kind="gpu" if on_gpu else "cpu",
        device_id=spec.device.index if on_gpu else 0,
        providers=granted,
        instance_count=spec.instance_count,
    )
    instances = [
        OrtInstance(session, f"ort-{spec.name}-{spec.version}-{index}")
        for index, session in enumerate(sessions)
    ]
    runner = ModelRunner(signature, placement, instances)
    if spec.warmup:
        try:
            runner.warm_up()
        except BaseException:
            runner.close()
            raise
    log.info(
        "%s loaded from %s on %s (%d instance%s)",
        spec.label,
        spec.path.name,
        ", ".join(granted),
        spec.instance_count,
        "" if spec.instance_count == 1 else "s",
    )
    return runner
