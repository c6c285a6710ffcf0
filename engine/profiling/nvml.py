"""The one NVML wrapper: the dashboard's memory probe and the profiler's NVML source both read through it.

`Nvml` initialises NVML on first use, once, and looks every device handle up then; the visible devices
follow CUDA_VISIBLE_DEVICES (indices and UUID prefixes, CUDA order). Share one `Nvml` between readers
so a process initialises NVML once. Every failure (no nvidia-ml-py, no driver, a lost GPU, a fake
missing a function) becomes an `NvmlError` whose message is the reason; nothing else escapes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any


class NvmlError(RuntimeError):
    """NVML cannot give this figure here; the message says why."""


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


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def normalise_uuid(uuid) -> str:
    """NVML says b'GPU-8932f937-...', torch '8932F937-...' and CUDA_VISIBLE_DEVICES either: one form."""
    text = _text(uuid).strip().lower()
    return text.removeprefix("gpu-")


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Nvml:
    """One NVML session. `module` replaces pynvml (tests pass a fake); `env` replaces os.environ."""

    def __init__(self, env: dict[str, str] | None = None, module=None):
        self._env, self._module = env, module
        self._lock = threading.Lock()  # readers may sit on different threads; NVML is initialised once
        self._lib = None  # the pynvml module while NVML is initialised
        self._reason: str | None = None  # None: not opened yet; "": open; else why NVML is not available
        self._handles: list = []  # every GPU, NVML's order
        self._uuids: list[str | None] = []  # normalised, looked up when first needed
        self._names: dict[int, str] = {}
        self._visible: list[int] = []

    # -- session -----------------------------------------------------------------------------
    def open(self) -> str:
        """Initialises NVML the first time; "" when it works, else the reason (the same on every call)."""
        with self._lock:
            if self._reason is None:
                self._reason = self._init()
            return self._reason

    @property
    def reason(self) -> str:
        return self.open()

    def _init(self) -> str:
        lib: Any = self._module  # pynvml, or a module like it (tests)
        if lib is None:
            try:
                import pynvml  # nvidia-ml-py; optional
            except ImportError:
                return "nvidia-ml-py is not installed"
            except Exception as exc:  # a broken install must not take the caller down either
                return f"pynvml: {_why(exc)}"
            lib = pynvml
        try:
            lib.nvmlInit()
        except Exception as exc:  # NVMLError subclasses: no driver library, driver not loaded, ...
            return _why(exc)
        self._lib = lib
        try:
            self._handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in range(lib.nvmlDeviceGetCount())]
            self._uuids = [None] * len(self._handles)
            self._visible = self._select(visible_device_selectors(self._env))
        except Exception as exc:
            self._shutdown()
            return _why(exc)
        return ""

    def _select(self, selectors: list[str] | None) -> list[int]:
        """NVML indices of the GPUs CUDA shows this process, in CUDA's order."""
        count = len(self._handles)
        if selectors is None:
            return list(range(count))
        chosen = []
        for sel in selectors:
            if sel.isdigit():
                if int(sel) >= count:
                    break  # like CUDA: devices after an invalid entry are not visible
                chosen.append(int(sel))
            else:
                prefix = normalise_uuid(sel)
                match = [i for i in range(count) if self._uuid(i).startswith(prefix)]
                if len(match) != 1:
                    break
                chosen.append(match[0])
        return chosen

    def close(self) -> None:
        """Shuts NVML down if it was initialised; later reads raise NvmlError. Never raises."""
        with self._lock:
            if self._lib is not None:
                self._shutdown()
            self._reason = "NVML was shut down"

    def _shutdown(self) -> None:
        lib, self._lib, self._handles = self._lib, None, []
        if lib is None:
            return
        with contextlib.suppress(Exception):  # a fake without it, or a driver already gone: nothing to release
            lib.nvmlShutdown()

    # -- devices (NVML indices) ----------------------------------------------------------------
    def visible(self) -> list[int]:
        """NVML indices of the GPUs this process sees (CUDA_VISIBLE_DEVICES), CUDA's order: CUDA device
        i is NVML device visible()[i] when CUDA_DEVICE_ORDER=PCI_BUS_ID; otherwise match by UUID."""
        self._check()
        return list(self._visible)

    def count(self) -> int:
        self._check()
        return len(self._handles)

    def find(self, uuid) -> int | None:
        """The NVML index of the GPU with this UUID (any form), or None."""
        wanted = normalise_uuid(uuid)
        return next((i for i in range(self.count()) if self._call(self._uuid, i) == wanted), None)

    def name(self, index: int) -> str:
        if index not in self._names:
            self._names[index] = self._call(lambda: _text(self._lib_call("nvmlDeviceGetName", index)))
        return self._names[index]

    def memory(self, index: int) -> tuple[int, int]:
        """(used, total) bytes on the GPU, every process and context included."""
        def read():
            info = self._lib_call("nvmlDeviceGetMemoryInfo", index)
            return int(info.used), int(info.total)
        return self._call(read)

    def used(self, index: int) -> int:
        """Bytes in use on the GPU, every process and context included."""
        return self._call(lambda: int(self._lib_call("nvmlDeviceGetMemoryInfo", index).used))

    def processes(self, index: int) -> dict[int, int]:
        """{pid: bytes} of the processes holding memory on the GPU. A pid in another PID namespace (a
        container) is the host's; a figure the driver does not give (WDDM) counts 0."""
        def read():
            used: dict[int, int] = {}
            procs = list(self._lib_call("nvmlDeviceGetComputeRunningProcesses", index))
            with contextlib.suppress(Exception):  # not on some compute-only boards: CUDA is what we care about
                procs += self._lib_call("nvmlDeviceGetGraphicsRunningProcesses", index)
            for proc in procs:
                used[int(proc.pid)] = max(used.get(int(proc.pid), 0), int(proc.usedGpuMemory or 0))
            return used
        return self._call(read)

    # -- plumbing ---------------------------------------------------------------------------
    def _check(self) -> None:
        if self.open():
            raise NvmlError(self._reason)

    def _call(self, function, *args):
        self._check()
        try:
            return function(*args)
        except NvmlError:
            raise
        except Exception as exc:  # NVMLError, or anything a driver or a fake throws
            raise NvmlError(_why(exc)) from None

    def _lib_call(self, function: str, index: int):
        if not 0 <= index < len(self._handles):  # a negative index would quietly read another GPU
            raise NvmlError(f"no GPU {index} (NVML sees {len(self._handles)})")
        return getattr(self._lib, function)(self._handles[index])

    def _uuid(self, index: int) -> str:
        uuid = self._uuids[index]
        if uuid is None:
            assert self._lib is not None  # devices are looked up only while NVML is open
            uuid = self._uuids[index] = normalise_uuid(self._lib.nvmlDeviceGetUUID(self._handles[index]))
        return uuid
