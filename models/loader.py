"""Loading one model version: sessions on the chosen providers, signature, warm-up."""

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from turnout.models.cache import CacheSettings
from turnout.models.instance import Binding, OrtInstance, SessionFactory
from turnout.models.providers import CPU, Device, provider_chain, report_fallback
from turnout.models.runner import ModelRunner
from turnout.models.scheduler import BatchPolicy
from turnout.models.session import (
    SessionSettings,
    UnsupportedModel,
    create_session,
    read_signature,
)
from turnout.models.types import PlacedGroup, Placement

log = logging.getLogger(__name__)

IoBinding = Literal["auto", "on", "off"]


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """``count`` instances on ``device`` (``auto``: CUDA device 0 when usable, else the CPU)."""

    device: Device
    count: int


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """Everything needed to load one model version."""

    name: str
    version: str
    path: Path
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(Device("auto"), 1),)
    tensorrt: bool = False
    session: SessionSettings = field(default_factory=SessionSettings)
    max_batch_size: int | None = None
    dynamic_batching: bool = True
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 512
    timeout_s: float | None = None
    run_timeout_s: float | None = None
    cache: CacheSettings | None = None
    io_binding: IoBinding = "auto"
    warmup: bool = True

    @property
    def label(self) -> str:
        """How logs name this version."""
        return f"model {self.name!r} version {self.version}"

    @property
    def cpu_instances(self) -> int:
        """Instances that will (or may, for ``auto``) run on the CPU."""
        return sum(group.count for group in self.instance_groups if group.device.kind != "cuda")


def load_version(spec: VersionSpec, cpu_instances_sharing: int = 1) -> ModelRunner:
    """Create, inspect and warm up the version's instances. Blocks; call it off the event loop.

    ``cpu_instances_sharing`` is how many CPU instances the whole process runs, so that the
    default thread count of each leaves the cores shared out rather than oversubscribed.
    Raises whatever ONNX Runtime raises for a model it cannot load, or UnsupportedModel.
    """
    available = ort.get_available_providers()
    placed: list[tuple[PlacedGroup, list[ort.InferenceSession], SessionFactory]] = []
    for group in spec.instance_groups:
        requested = provider_chain(group.device, spec.tensorrt, available, spec.label)
        make_session: SessionFactory = functools.partial(
            create_session, spec.path, spec.session, requested, cpu_instances_sharing
        )
        sessions = [make_session() for _ in range(group.count)]
        granted = tuple(sessions[0].get_providers())
        report_fallback(spec.label, requested, granted)
        on_gpu = granted[0] != CPU
        kind: Literal["cpu", "gpu"] = "gpu" if on_gpu else "cpu"
        placed_group = PlacedGroup(kind, group.device.index if on_gpu else 0, group.count, granted)
        placed.append((placed_group, sessions, make_session))
    signature = read_signature(placed[0][1][0], spec.name, spec.version, spec.max_batch_size)
    # ONNX Runtime binds only numeric tensors.
    bindable = not any(t.datatype.is_bytes for t in (*signature.inputs, *signature.outputs))
    instances: list[OrtInstance] = []
    for placed_group, sessions, group_sessions in placed:
        binding = _binding(spec.io_binding, placed_group) if bindable else None
        for session in sessions:
            thread_name = f"ort-{spec.name}-{spec.version}-{len(instances)}"
            instances.append(OrtInstance(session, thread_name, binding, group_sessions))
    groups = [placed_group for placed_group, _, _ in placed]
    try:
        too_big = [size for size in spec.preferred_batch_sizes if size > signature.max_batch_size]
        if too_big:
            raise UnsupportedModel(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {signature.max_batch_size}"
            )
        policy = BatchPolicy(
            max_batch_size=signature.max_batch_size if spec.dynamic_batching else 0,
            max_queue_delay_s=spec.max_queue_delay_s,
            preferred_batch_sizes=spec.preferred_batch_sizes,
            max_queue_size=spec.max_queue_size,
            run_timeout_s=spec.run_timeout_s,
        )
        runner = ModelRunner(
            signature, Placement(tuple(groups)), instances, policy, spec.cache, spec.timeout_s
        )
        if spec.warmup:
            runner.warm_up()
    except BaseException:
        for instance in instances:
            instance.close()
        raise
    log.info(
        "%s loaded from %s: %s; batching %s",
        spec.label,
        spec.path.name,
        ", ".join(
            f"{g.count} on {g.kind}:{g.device_id} ({', '.join(g.providers)})" for g in groups
        ),
        f"up to {policy.max_batch_size} rows" if policy.max_batch_size else "off",
    )
    return runner


def _binding(mode: IoBinding, group: PlacedGroup) -> Binding | None:
    on_gpu = group.kind == "gpu"
    if mode == "off" or (mode == "auto" and not on_gpu):
        return None
    return Binding("cuda", group.device_id) if on_gpu else Binding("cpu")
