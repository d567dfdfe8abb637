"""Devices from config and the execution providers asked of ONNX Runtime for them
(models/providers.py). ``cuda_device_count`` asks the GPU driver, which is outside Turnout; the
tests replace it with a fixed count."""

import logging
from typing import NamedTuple

import pytest

from turnout.models import providers
from turnout.models.providers import (
    CPU,
    CUDA,
    TENSORRT,
    Device,
    ProviderSpec,
    provider_chain,
    report_fallback,
)

LOGGER = "turnout.models.providers"
ALL = (TENSORRT, CUDA, CPU)
NO_TENSORRT = (CUDA, CPU)
CPU_ONLY = (CPU,)


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> "GpuCount":
    """Sets how many CUDA devices the (faked) driver reports."""
    return GpuCount(monkeypatch)


class GpuCount:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch

    def set(self, count: int) -> None:
        self._monkeypatch.setattr(providers, "cuda_device_count", lambda: count)


# -- Device.parse --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        pytest.param("auto", Device("auto"), "auto", id="auto"),
        pytest.param("cpu", Device("cpu"), "cpu", id="cpu"),
        pytest.param("cuda", Device("cuda", 0), "cuda:0", id="cuda"),
        pytest.param("cuda:0", Device("cuda", 0), "cuda:0", id="cuda-0"),
        pytest.param("cuda:3", Device("cuda", 3), "cuda:3", id="cuda-3"),
        pytest.param("cuda:12", Device("cuda", 12), "cuda:12", id="cuda-12"),
    ],
)
def test_device_parse(text: str, expected: Device, shown: str) -> None:
    device = Device.parse(text)

    assert device == expected
    assert str(device) == shown


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("gpu", id="gpu"),
        pytest.param("CPU", id="upper-cpu"),
        pytest.param("Cuda", id="mixed-case"),
        pytest.param("cuda:", id="no-index"),
        pytest.param("cuda:x", id="letter-index"),
        pytest.param("cuda:-1", id="negative-index"),
        pytest.param("cuda:+1", id="signed-index"),
        pytest.param("cuda:1.0", id="decimal-index"),
        pytest.param("cuda: 1", id="space-in-index"),
        pytest.param("cuda:0:1", id="two-indices"),
        pytest.param("cpu:0", id="cpu-with-index"),
        pytest.param("auto:0", id="auto-with-index"),
        pytest.param(" cuda", id="leading-space"),
        pytest.param("cuda ", id="trailing-space"),
        pytest.param("cuda:²", id="superscript-digit"),
        pytest.param("cuda:\u0661", id="arabic-indic-digit"),
        pytest.param("cuda:\uff11", id="fullwidth-digit"),
    ],
)
def test_device_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"^must be auto, cpu, cuda or cuda:N$"):
        Device.parse(text)


# -- provider_chain ------------------------------------------------------------------------------


class Setup(NamedTuple):
    """A device from config, whether TensorRT is asked for, the providers this ONNX Runtime build
    has, and how many CUDA devices the driver reports."""

    device: str
    tensorrt: bool
    available: tuple[str, ...]
    gpus: int


CHAINS = [
    pytest.param(Setup("cpu", False, ALL, 2), [(CPU, {})], id="cpu"),
    pytest.param(Setup("cpu", True, ALL, 2), [(CPU, {})], id="cpu-ignores-tensorrt"),
    pytest.param(
        Setup("auto", False, ALL, 2), [(CUDA, {"device_id": 0}), (CPU, {})], id="auto-gpu"
    ),
    pytest.param(Setup("auto", False, ALL, 0), [(CPU, {})], id="auto-no-device"),
    pytest.param(Setup("auto", False, CPU_ONLY, 2), [(CPU, {})], id="auto-no-cuda-provider"),
    pytest.param(Setup("cuda", False, ALL, 2), [(CUDA, {"device_id": 0}), (CPU, {})], id="cuda"),
    pytest.param(
        Setup("cuda:1", False, ALL, 2), [(CUDA, {"device_id": 1}), (CPU, {})], id="cuda-1"
    ),
    pytest.param(Setup("cuda:2", False, ALL, 2), [(CPU, {})], id="cuda-index-missing"),
    pytest.param(Setup("cuda", False, ALL, 0), [(CPU, {})], id="cuda-no-device"),
    pytest.param(Setup("cuda:1", False, CPU_ONLY, 2), [(CPU, {})], id="cuda-no-provider"),
    pytest.param(
        Setup("cuda:1", True, ALL, 2),
        [(TENSORRT, {"device_id": 1}), (CUDA, {"device_id": 1}), (CPU, {})],
        id="tensorrt",
    ),
    pytest.param(
        Setup("auto", True, ALL, 1),
        [(TENSORRT, {"device_id": 0}), (CUDA, {"device_id": 0}), (CPU, {})],
        id="auto-tensorrt",
    ),
    pytest.param(
        Setup("cuda", True, NO_TENSORRT, 1),
        [(CUDA, {"device_id": 0}), (CPU, {})],
        id="tensorrt-not-in-build",
    ),
    pytest.param(Setup("auto", True, ALL, 0), [(CPU, {})], id="tensorrt-without-device"),
    pytest.param(
        Setup("cuda", True, CPU_ONLY, 1), [(CPU, {})], id="tensorrt-without-cuda-provider"
    ),
]


@pytest.mark.parametrize(("setup", "expected"), CHAINS)
def test_provider_chain(gpus: GpuCount, setup: Setup, expected: list[ProviderSpec]) -> None:
    gpus.set(setup.gpus)

    chain = provider_chain(Device.parse(setup.device), setup.tensorrt, setup.available)

    assert chain == expected
    assert chain[-1] == (CPU, {})


LOGS = [
    pytest.param(Setup("cpu", False, ALL, 0), [], id="cpu-silent"),
    pytest.param(Setup("auto", False, ALL, 1), [], id="auto-gpu-silent"),
    pytest.param(Setup("cuda:1", False, ALL, 2), [], id="cuda-silent"),
    pytest.param(
        Setup("auto", False, CPU_ONLY, 1),
        [
            (
                logging.INFO,
                "device auto: this ONNX Runtime build has no CUDA provider; running on the CPU",
            )
        ],
        id="auto-no-provider-info",
    ),
    pytest.param(
        Setup("auto", False, ALL, 0),
        [(logging.INFO, "device auto: no CUDA device found; running on the CPU")],
        id="auto-no-device-info",
    ),
    pytest.param(
        Setup("cuda", False, CPU_ONLY, 1),
        [
            (
                logging.WARNING,
                "device cuda:0: this ONNX Runtime build has no CUDA provider; running on the CPU",
            )
        ],
        id="cuda-no-provider-warning",
    ),
    pytest.param(
        Setup("cuda", False, ALL, 0),
        [(logging.WARNING, "device cuda:0: no CUDA device found; running on the CPU")],
        id="cuda-no-device-warning",
    ),
    pytest.param(
        Setup("cuda:3", False, ALL, 2),
        [
            (
                logging.WARNING,
                "device cuda:3: CUDA device 3 does not exist (2 found); running on the CPU",
            )
        ],
        id="cuda-index-missing-warning",
    ),
    pytest.param(
        Setup("cuda:1", True, NO_TENSORRT, 2),
        [
            (
                logging.WARNING,
                "device cuda:1: TensorRT is not in this ONNX Runtime build; using CUDA",
            )
        ],
        id="tensorrt-missing-warning",
    ),
    pytest.param(Setup("cuda:1", True, ALL, 2), [], id="tensorrt-silent"),
    pytest.param(
        Setup("auto", True, ALL, 0),
        [(logging.INFO, "device auto: no CUDA device found; running on the CPU")],
        id="auto-tensorrt-no-device-info-only",
    ),
]


@pytest.mark.parametrize(("setup", "expected"), LOGS)
def test_provider_chain_logs(
    gpus: GpuCount,
    caplog: pytest.LogCaptureFixture,
    setup: Setup,
    expected: list[tuple[int, str]],
) -> None:
    gpus.set(setup.gpus)

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        provider_chain(Device.parse(setup.device), setup.tensorrt, setup.available)

    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert records == expected


def test_cpu_device_does_not_ask_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> int:
        raise AssertionError("the driver was asked for a CPU device")

    monkeypatch.setattr(providers, "cuda_device_count", no_driver)

    assert provider_chain(Device("cpu"), False, ALL) == [(CPU, {})]


def test_build_without_cuda_does_not_ask_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> int:
        raise AssertionError("the driver was asked although the build has no CUDA provider")

    monkeypatch.setattr(providers, "cuda_device_count", no_driver)

    assert provider_chain(Device("auto"), False, CPU_ONLY) == [(CPU, {})]


def test_real_cuda_device_count_is_a_non_negative_int() -> None:
    count = providers.cuda_device_count()

    assert isinstance(count, int)
    assert count >= 0


# -- report_fallback -----------------------------------------------------------------------------

FALLBACKS = [
    # (requested providers, granted providers, expected warning or None)
    pytest.param([CPU], [CPU], None, id="cpu-granted"),
    pytest.param([CUDA, CPU], [CUDA, CPU], None, id="cuda-granted"),
    pytest.param([TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU], None, id="all-granted"),
    pytest.param(
        [CUDA, CPU],
        [CPU],
        "model 'm' version 1: ONNX Runtime could not start CUDAExecutionProvider; "
        "running on CPUExecutionProvider",
        id="cuda-dropped",
    ),
    pytest.param(
        [TENSORRT, CUDA, CPU],
        [CUDA, CPU],
        "model 'm' version 1: ONNX Runtime could not start TensorrtExecutionProvider; "
        "running on CUDAExecutionProvider, CPUExecutionProvider",
        id="tensorrt-dropped",
    ),
    pytest.param(
        [TENSORRT, CUDA, CPU],
        [CPU],
        "model 'm' version 1: ONNX Runtime could not start TensorrtExecutionProvider, "
        "CUDAExecutionProvider; running on CPUExecutionProvider",
        id="both-dropped",
    ),
]


@pytest.mark.parametrize(("requested", "granted", "expected"), FALLBACKS)
def test_report_fallback(
    caplog: pytest.LogCaptureFixture,
    requested: list[str],
    granted: list[str],
    expected: str | None,
) -> None:
    chain: list[ProviderSpec] = [(name, {}) for name in requested]

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        report_fallback("model 'm' version 1", chain, granted)

    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert records == ([] if expected is None else [(logging.WARNING, expected)])
