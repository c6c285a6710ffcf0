"""Live device memory for the dashboard: NVML when there is an NVIDIA GPU, process RSS when not.

A small interface (`MemoryProbe.read() -> MemoryReading`) so the panel never knows where the
numbers come from and tests can pass a fake. Reading memory must never crash the dashboard:
every NVML failure turns into a message and the RSS fallback. NVML is read through `nvml.Nvml`,
a session the dashboard shares with its memory profile's NVML source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..records.memory_reading import GpuMemory, MemoryReading
from .memory import process_rss_bytes
from .nvml import Nvml, NvmlError, visible_device_selectors

__all__ = ["GpuMemory", "MemoryReading", "MemoryProbe", "RssProbe", "RecordedProbe", "NvmlProbe", "SafeProbe",
           "FakeProbe", "open_probe", "visible_device_selectors"]


class MemoryProbe(Protocol):
    def read(self) -> MemoryReading: ...

    def close(self) -> None: ...


class RssProbe:
    """No GPU figures: the process resident set size, with the reason."""

    def __init__(self, note: str):
        self.note = note

    def read(self) -> MemoryReading:
        return MemoryReading(rss_bytes=process_rss_bytes(), note=self.note, source="rss")

    def close(self) -> None:
        pass


class RecordedProbe:
    """A replay: this machine's memory is not the recorded run's, so there is no live reading."""

    note = "replay: no live reading (recorded run)"

    def read(self) -> MemoryReading:
        return MemoryReading(note=self.note, source="recorded")

    def close(self) -> None:
        pass


class NvmlProbe:
    """Used / total for each GPU visible to this process, through NVML.

    `nvml`: a session shared with other readers (the profiler's source); the probe reads through it and
    leaves closing it to its owner. Without one the probe opens its own (honouring `env`) and closes it.
    Raises NvmlError with the reason when NVML gives no GPU here.
    """

    def __init__(self, env: dict[str, str] | None = None, nvml: Nvml | None = None):
        self._owned = nvml is None
        self._nvml = Nvml(env) if nvml is None else nvml
        try:
            self._devices = self._nvml.visible()
            if not self._devices:
                raise NvmlError("CUDA_VISIBLE_DEVICES hides all")  # fits the 38-column panel after "no GPU: "
        except NvmlError:
            self.close()
            raise

    def read(self) -> MemoryReading:
        gpus = []
        for index, device in enumerate(self._devices):
            used, total = self._nvml.memory(device)
            gpus.append(GpuMemory(index, self._nvml.name(device), used, total))
        return MemoryReading(gpus=tuple(gpus), rss_bytes=process_rss_bytes())

    def close(self) -> None:
        if self._owned:
            self._nvml.close()


class SafeProbe:
    """Wraps a probe so that a failure mid-run switches to RSS with the reason, never raises."""

    def __init__(self, inner: MemoryProbe):
        self._inner = inner

    def read(self) -> MemoryReading:
        try:
            return self._inner.read()
        except Exception as exc:
            self._inner.close()
            self._inner = RssProbe(f"GPU reading failed: {_short(exc)}")
            return self._inner.read()

    def close(self) -> None:
        self._inner.close()


@dataclass
class FakeProbe:
    """Fixed readings for tests and demos; cycles through `readings`."""

    readings: list[MemoryReading] = field(default_factory=lambda: [MemoryReading()])
    closed: bool = False
    _next: int = 0

    def read(self) -> MemoryReading:
        reading = self.readings[self._next % len(self.readings)]
        self._next += 1
        return reading

    def close(self) -> None:
        self.closed = True


def open_probe(env: dict[str, str] | None = None, nvml: Nvml | None = None) -> MemoryProbe:
    """NVML if it works here, else process RSS with a message saying why. `nvml`: see NvmlProbe."""
    try:
        return SafeProbe(NvmlProbe(env, nvml))
    except NvmlError as exc:  # the usual one fits the panel at 80 columns: "no GPU: NVML Shared Library Not Found"
        return RssProbe(f"no GPU: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 60 else text[:57] + "..."
