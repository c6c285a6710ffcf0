"""Where memory readings come from: torch's CUDA allocator, NVML, process RSS, or a function (tests).

A source's `read()` returns {metric name: bytes}. A source that cannot work here (no GPU, no NVML
library, no driver) raises SourceUnavailable with the reason, from `open_sources` or later from
`read()`; profilers drop it and keep the reason to show. Nothing here may crash a run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .memory import cuda_allocator_bytes, process_rss_bytes


class SourceUnavailable(RuntimeError):
    """This source cannot read memory here; the message says why."""


class MemorySource:
    name = "source"

    def read(self) -> dict[str, int]:
        raise NotImplementedError


class RssSource(MemorySource):
    """Resident set size of this process: on the CPU, where the model, KV cache and records live."""

    name = "rss"

    def read(self) -> dict[str, int]:
        return {"rss": process_rss_bytes()}


class TorchCudaSource(MemorySource):
    """torch's caching allocator: what tensors hold (allocated) and what it kept from the driver (reserved)."""

    name = "cuda"

    def __init__(self, device: int | str | torch.device = 0):
        if not torch.cuda.is_available():
            raise SourceUnavailable("torch sees no CUDA GPU")
        self.device = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        if self.device.type != "cuda":
            raise SourceUnavailable(f"device {self.device} is not a CUDA device")

    def read(self) -> dict[str, int]:
        allocated, reserved = cuda_allocator_bytes(self.device)
        return {"cuda.allocated": allocated, "cuda.reserved": reserved}


def _norm_uuid(uuid) -> str:
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


class NvmlSource(MemorySource):
    """The driver's view of a GPU (NVML): all memory in use on it, by every process and the CUDA context.

    It sees what torch's allocator does not (the context, other libraries, other processes), which is
    why a growth here without one in cuda.allocated points outside our tensors.

    NVML numbers GPUs in PCI order over the whole machine; CUDA numbers the visible ones, fastest first.
    So the GPU is found by `uuid` (the CUDA device's) when given, and by `index` only when that fails:
    `matched` says which.
    """

    name = "nvml"

    def __init__(self, index: int = 0, uuid: str | None = None, nvml=None):
        if nvml is None:
            try:
                import pynvml as nvml  # from nvidia-ml-py; optional
            except ImportError:
                raise SourceUnavailable("pynvml (nvidia-ml-py) is not installed") from None
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            self._handle, self.index, self.matched = None, index, "index"
            if uuid is not None:
                for i in range(nvml.nvmlDeviceGetCount()):
                    handle = nvml.nvmlDeviceGetHandleByIndex(i)
                    if _norm_uuid(nvml.nvmlDeviceGetUUID(handle)) == _norm_uuid(uuid):
                        self._handle, self.index, self.matched = handle, i, "uuid"
                        break
            if self._handle is None:
                self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # NVMLError subclasses: no driver, no such GPU, ...
            raise SourceUnavailable(f"NVML cannot open GPU {index}: {exc}") from None

    def read(self) -> dict[str, int]:
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except Exception as exc:
            raise SourceUnavailable(f"NVML read failed on GPU {self.index}: {exc}") from None
        return {"nvml.used": int(info.used)}


def _cuda_uuid(index: int) -> str | None:
    try:
        return str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # older torch, or a driver that does not say
        return None


class FunctionSource(MemorySource):
    """Reads by calling a function: for tests (a scripted series) and for quantities of your own."""

    def __init__(self, name: str, read: Callable[[], dict[str, int]]):
        self.name = name
        self._read = read

    def read(self) -> dict[str, int]:
        return dict(self._read())


def open_sources(device: torch.device | str = "cpu") -> tuple[list[MemorySource], dict[str, str]]:
    """The sources that work for an engine on `device`, and {name: reason} for those that do not.

    RSS always; on a CUDA device also torch's allocator and NVML (for the same GPU, found by UUID).
    """
    device = torch.device(device)
    sources: list[MemorySource] = [RssSource()]
    unavailable: dict[str, str] = {}
    if device.type != "cuda":
        unavailable["cuda"] = unavailable["nvml"] = f"engine runs on {device.type}"
        return sources, unavailable
    index = device.index if device.index is not None else torch.cuda.current_device()
    makers = (("cuda", lambda: TorchCudaSource(index)), ("nvml", lambda: NvmlSource(index, _cuda_uuid(index))))
    for name, make in makers:
        try:
            sources.append(make())
        except SourceUnavailable as exc:
            unavailable[name] = str(exc)
    return sources, unavailable
