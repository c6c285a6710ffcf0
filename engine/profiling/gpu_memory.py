"""Live device memory for the dashboard: NVML when there is an NVIDIA GPU, process RSS when not.

A small interface (`MemoryProbe.read() -> MemoryReading`) so the panel never knows where the
numbers come from and tests can pass a fake. Reading memory must never crash the dashboard:
every NVML failure turns into a message and the RSS fallback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

from engine.profiling.memory import process_rss_bytes


@dataclass(frozen=True)
class GpuMemory:
    index: int  # the device's index as the process sees it (after CUDA_VISIBLE_DEVICES)
    name: str
    used_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class MemoryReading:
    gpus: tuple[GpuMemory, ...] = ()
    rss_bytes: int = 0
    note: str = ""  # why there are no GPU figures, when there are none
    source: str = "nvml"  # "nvml", "rss" or "recorded" (a replay: no live figures at all)


class MemoryProbe(Protocol):
    def read(self) -> MemoryReading: ...

    def close(self) -> None: ...


def visible_device_selectors(env: dict[str, str] | None = None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of indices or UUID prefixes; None when unset (all)."""
    value = (env if env is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    selectors = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            break
        if part.startswith("-"):  # CUDA stops at the first invalid entry; a negative one hides all after
            break
        selectors.append(part)
    return selectors


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
    """Used / total for each GPU visible to this process, through pynvml."""

    def __init__(self, env: dict[str, str] | None = None):
        import pynvml  # nvidia-ml-py; fails without the package

        self._nvml = pynvml
        pynvml.nvmlInit()  # raises NVMLError without the driver library
        try:
            self._handles = self._visible_handles(visible_device_selectors(env))
        except Exception:
            pynvml.nvmlShutdown()
            raise
        if not self._handles:
            pynvml.nvmlShutdown()
            raise RuntimeError("no GPU visible (CUDA_VISIBLE_DEVICES hides them all)")

    def _visible_handles(self, selectors: list[str] | None) -> list[tuple[str, object]]:
        nvml = self._nvml
        count = nvml.nvmlDeviceGetCount()
        every = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        if selectors is None:
            chosen = every
        else:
            uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in every]
            chosen = []
            for sel in selectors:
                if sel.isdigit():
                    if int(sel) >= count:
                        break  # like CUDA: devices after an invalid entry are not visible
                    chosen.append(every[int(sel)])
                else:
                    match = [h for h, u in zip(every, uuids) if u.startswith(sel) or u == f"GPU-{sel}"]
                    if len(match) != 1:
                        break
                    chosen.append(match[0])
        return [(_text(nvml.nvmlDeviceGetName(h)), h) for h in chosen]

    def read(self) -> MemoryReading:
        gpus = []
        for index, (name, handle) in enumerate(self._handles):
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GpuMemory(index, name, int(info.used), int(info.total)))
        return MemoryReading(gpus=tuple(gpus), rss_bytes=process_rss_bytes())

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


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


def open_probe(env: dict[str, str] | None = None) -> MemoryProbe:
    """NVML if it works here, else process RSS with a message saying why."""
    try:
        return SafeProbe(NvmlProbe(env))
    except ImportError:
        return RssProbe("no GPU: nvidia-ml-py is not installed")
    except Exception as exc:  # the usual one fits the panel at 80 columns: "no GPU: NVML Shared Library Not Found"
        return RssProbe(f"no GPU: {_short(exc)}")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 60 else text[:57] + "..."
