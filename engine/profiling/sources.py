"""Where memory readings come from: torch's CUDA allocator, NVML, process RSS, or a function (tests).

A source's `read()` returns {metric name: bytes}. A source that cannot work here (no GPU, no NVML
library, no driver) raises SourceUnavailable with the reason, from `open_sources` or later from
`read()`; profilers drop it and keep the reason to show. Nothing here may crash a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a replay or a viewer reads memory figures without loading torch
    import torch

from .memory import cuda_allocator_bytes, process_rss_bytes
from .nvml import Nvml, NvmlError


class SourceUnavailable(RuntimeError):
    """This source cannot read memory here; the message says why."""


class MemorySource:
    name = "source"

    def read(self) -> dict[str, int]:
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the source opened (an NVML session); the default has nothing to release."""


class RssSource(MemorySource):
    """Resident set size of this process: on the CPU, where the model, KV cache and records live."""

    name = "rss"

    def read(self) -> dict[str, int]:
        return {"rss": process_rss_bytes()}


class TorchCudaSource(MemorySource):
    """torch's caching allocator: what tensors hold (allocated) and what it kept from the driver (reserved)."""

    name = "cuda"

    def __init__(self, device: int | str | torch.device = 0):
        import torch

        if not torch.cuda.is_available():
            raise SourceUnavailable("torch sees no CUDA GPU")
        self.device = torch.device(device if not isinstance(device, int) else f"cuda:{device}")
        if self.device.type != "cuda":
            raise SourceUnavailable(f"device {self.device} is not a CUDA device")

    def read(self) -> dict[str, int]:
        allocated, reserved = cuda_allocator_bytes(self.device)
        return {"cuda.allocated": allocated, "cuda.reserved": reserved}


class NvmlSource(MemorySource):
    """The driver's view of a GPU (NVML): all memory in use on it, by every process and the CUDA context.

    It sees what torch's allocator does not (the context, other libraries, other processes), which is
    why a growth here without one in cuda.allocated points outside our tensors.

    NVML numbers GPUs in PCI order over the whole machine; CUDA numbers the visible ones, fastest first.
    So the GPU is found by `uuid` (the CUDA device's) when given, and by `index` among the visible ones
    only when that fails: `matched` says which; `self.index` is then NVML's number for it.

    `nvml`: an Nvml session shared with other readers (the dashboard's probe), read through and left for
    its owner to close; or a pynvml-like module (tests), or None for pynvml: the source opens its own.
    """

    name = "nvml"

    def __init__(self, index: int = 0, uuid: str | None = None, nvml=None):
        self._owned = not isinstance(nvml, Nvml)
        self._nvml = Nvml(module=nvml) if self._owned else nvml
        try:
            found = self._nvml.find(uuid) if uuid is not None else None
            if found is not None:
                self.index, self.matched = found, "uuid"
            else:
                visible = self._nvml.visible()
                # past the visible list CUDA has no such GPU (a fake's case): NVML's own number
                self.index, self.matched = (visible[index] if 0 <= index < len(visible) else index), "index"
                if not 0 <= self.index < self._nvml.count():
                    raise NvmlError(f"no GPU {self.index} (NVML sees {self._nvml.count()})")
        except NvmlError as exc:
            self.close()
            raise SourceUnavailable(f"NVML cannot open GPU {index}: {exc}") from None

    def read(self) -> dict[str, int]:
        try:
            used = self._nvml.used(self.index)
        except NvmlError as exc:
            raise SourceUnavailable(f"NVML read failed on GPU {self.index}: {exc}") from None
        return {"nvml.used": used}

    def close(self) -> None:
        if self._owned:
            self._nvml.close()


def _current_cuda_device() -> int:
    import torch

    try:
        return torch.cuda.current_device()
    except Exception:  # no CUDA in this torch: the sources below say so instead of raising here
        return 0


def _cuda_uuid(index: int) -> str | None:
    import torch

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


def open_sources(device: torch.device | str = "cpu", nvml: Nvml | None = None
                 ) -> tuple[list[MemorySource], dict[str, str]]:
    """The sources that work for an engine on `device`, and {name: reason} for those that do not.

    RSS always; on a CUDA device also torch's allocator and NVML (for the same GPU, found by UUID),
    read through `nvml` when given (a session shared with the dashboard's probe: NVML opens once).
    """
    import torch

    device = torch.device(device)
    sources: list[MemorySource] = [RssSource()]
    unavailable: dict[str, str] = {}
    if device.type != "cuda":
        unavailable["cuda"] = unavailable["nvml"] = f"engine runs on {device.type}"
        return sources, unavailable
    index = device.index if device.index is not None else _current_cuda_device()
    makers = (("cuda", lambda: TorchCudaSource(index)),
              ("nvml", lambda: NvmlSource(index, _cuda_uuid(index), nvml)))
    for name, make in makers:
        try:
            sources.append(make())
        except SourceUnavailable as exc:
            unavailable[name] = str(exc)
    return sources, unavailable
