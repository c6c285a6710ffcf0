"""The memory probe: NVML honouring CUDA_VISIBLE_DEVICES, and a fallback that never crashes."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from engine.profiling.gpu_memory import (FakeProbe, MemoryReading, NvmlProbe, RssProbe, SafeProbe, open_probe,
                              visible_device_selectors)

GIB = 1 << 30


def fake_pynvml(devices: list[tuple[str, str, int, int]], fail_init: bool = False) -> types.ModuleType:
    """A module with pynvml's names over fixed devices: (name, uuid, used, total)."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    mod.NVMLError = NVMLError
    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: None
    mod.nvmlDeviceGetCount = lambda: len(devices)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: devices[h][0]
    mod.nvmlDeviceGetUUID = lambda h: devices[h][1].encode()
    mod.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=devices[h][2], total=devices[h][3])
    return mod


DEVICES = [("GPU A", "GPU-aaaa-1111", 1 * GIB, 80 * GIB), ("GPU B", "GPU-bbbb-2222", 2 * GIB, 80 * GIB),
           ("GPU C", "GPU-cccc-3333", 3 * GIB, 40 * GIB)]


@pytest.fixture
def nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(DEVICES))


@pytest.mark.parametrize("value,expected", [
    (None, None), ("", []), ("0", ["0"]), ("2,0", ["2", "0"]), ("1,-1,0", ["1"]), ("GPU-bbbb", ["GPU-bbbb"]),
])
def test_visible_device_selectors(value, expected):
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert visible_device_selectors(env) == expected


@pytest.mark.parametrize("visible,names", [
    (None, ["GPU A", "GPU B", "GPU C"]), ("2,0", ["GPU C", "GPU A"]), ("1,7,0", ["GPU B"]),
    ("GPU-cccc", ["GPU C"]),
])
def test_nvml_probe_reports_only_visible_devices_in_cuda_order(nvml, visible, names):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    reading = NvmlProbe(env).read()
    assert [g.name for g in reading.gpus] == names
    assert [g.index for g in reading.gpus] == list(range(len(names)))  # renumbered like CUDA does
    first = next(d for d in DEVICES if d[0] == names[0])
    assert (reading.gpus[0].used_bytes, reading.gpus[0].total_bytes) == (first[2], first[3])


def test_no_visible_device_falls_back_to_rss(nvml):
    probe = open_probe({"CUDA_VISIBLE_DEVICES": ""})
    reading = probe.read()
    assert reading.gpus == () and reading.source == "rss" and reading.rss_bytes > 0
    assert "CUDA_VISIBLE_DEVICES" in reading.note


def test_missing_driver_falls_back_to_rss_with_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], fail_init=True))
    reading = open_probe({}).read()
    assert reading.source == "rss" and "NVML Shared Library Not Found" in reading.note
    # The memory panel is 38 columns wide at 80x24: the reason and the RSS line show whole, no ellipsis.
    from cbtui.widgets.memory_panel import reading_text
    lines = reading_text(reading, 38).plain.split("\n")
    assert lines[0] == "no GPU: NVML Shared Library Not Found" and lines[1].startswith("process RSS ")
    assert all(len(line) <= 38 for line in lines)


def test_missing_package_falls_back_to_rss(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert isinstance(open_probe({}), RssProbe)
    assert "nvidia-ml-py" in open_probe({}).read().note and len(open_probe({}).read().note) <= 38


def test_failure_mid_run_switches_to_rss_instead_of_raising():
    class Breaks:
        closed = False

        def read(self):
            raise OSError("GPU fell off the bus")

        def close(self):
            self.closed = True

    inner = Breaks()
    probe = SafeProbe(inner)
    reading = probe.read()
    assert reading.source == "rss" and "fell off the bus" in reading.note and inner.closed
    assert probe.read().source == "rss"


def test_fake_probe_cycles_its_readings():
    probe = FakeProbe([MemoryReading(rss_bytes=1), MemoryReading(rss_bytes=2)])
    assert [probe.read().rss_bytes for _ in range(3)] == [1, 2, 1]
    probe.close()
    assert probe.closed
