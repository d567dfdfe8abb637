"""Choosing ONNX Runtime execution providers for a device named in config, with a logged fall
back to the CPU when the device cannot be used."""

import ctypes
import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ProviderSpec = tuple[str, dict[str, Any]]
DeviceKind = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True, slots=True)
class Device:
    """A device as config names it: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

    kind: DeviceKind
    index: int = 0

    @classmethod
    def parse(cls, text: str) -> "Device":
        """Parse a config value; raises ValueError with the accepted forms."""
        kinds: dict[str, DeviceKind] = {"auto": "auto", "cpu": "cpu", "cuda": "cuda"}
        if text in kinds:
            return cls(kinds[text])
        indexed = re.fullmatch(r"cuda:([0-9]{1,3})", text)
        if indexed:
            return cls("cuda", int(indexed[1]))
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind


@functools.cache
def cuda_device_count() -> int:
    """How many CUDA devices the driver reports; 0 where there is no driver or no device.

    Asking the driver first keeps a CPU-only host from attempting (and loudly failing) to load
    ONNX Runtime's CUDA provider for every session.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def provider_chain(
    device: Device, tensorrt: bool, available: Sequence[str], label: str = ""
) -> list[ProviderSpec]:
    """The providers to ask ONNX Runtime for, best first; always ends with the CPU. ``label``
    names what is being loaded, for the log."""
    prefix = f"{label}: " if label else ""
    cpu: ProviderSpec = (CPU, {})
    if device.kind == "cpu":
        return [cpu]
    reason = _cuda_unusable_reason(device, available)
    if reason is not None:
        level = logging.INFO if device.kind == "auto" else logging.WARNING
        log.log(level, "%sdevice %s: %s; running on the CPU", prefix, device, reason)
        return [cpu]
    chain: list[ProviderSpec] = []
    if tensorrt:
        if TENSORRT in available:
            chain.append((TENSORRT, {"device_id": device.index}))
        else:
            log.warning(
                "%sdevice %s: TensorRT is not in this ONNX Runtime build; using CUDA",
                prefix,
                device,
            )
    chain.append((CUDA, {"device_id": device.index}))
    chain.append(cpu)
    return chain


def _cuda_unusable_reason(device: Device, available: Sequence[str]) -> str | None:
    if CUDA not in available:
        return "this ONNX Runtime build has no CUDA provider"
    count = cuda_device_count()
    if count == 0:
        return "no CUDA device found"
    if device.index >= count:
        return f"CUDA device {device.index} does not exist ({count} found)"
    return None


def report_fallback(label: str, requested: Sequence[ProviderSpec], granted: Sequence[str]) -> None:
    """Log when ONNX Runtime dropped a requested accelerator (it falls back without raising)."""
    missing = [name for name, _ in requested if name != CPU and name not in granted]
    if missing:
        log.warning(
            "%s: ONNX Runtime could not start %s; running on %s",
            label,
            ", ".join(missing),
            ", ".join(granted),
        )
