"""The memory probe: NVML honouring CUDA_VISIBLE_DEVICES, and a fallback that never crashes."""

from __future__ import annotations

import asyncio
import sys
import types
from collections import Counter
from types import SimpleNamespace

import pytest

from engine.profiling.gpu_memory import (
    FakeProbe,
    MemoryReading,
    NvmlProbe,
    RssProbe,
    SafeProbe,
    open_probe,
    visible_device_selectors,
)
from engine.profiling.nvml import Nvml, NvmlError, normalise_uuid
from engine.profiling.sources import NvmlSource, SourceUnavailable

GIB = 1 << 30


def fake_pynvml(devices: list[tuple[str, str, int, int]], fail_init: bool = False) -> types.ModuleType:
    """A module with pynvml's names over fixed devices: (name, uuid, used, total). `calls` counts
    initialisations and shutdowns."""
    mod = types.ModuleType("pynvml")
    mod.calls = Counter()

    class NVMLError(Exception):
        pass

    def init():
        mod.calls["init"] += 1
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    mod.NVMLError = NVMLError
    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: mod.calls.update(["shutdown"])
    mod.nvmlDeviceGetCount = lambda: len(devices)
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetName = lambda h: devices[h][0]
    mod.nvmlDeviceGetUUID = lambda h: devices[h][1].encode()
    mod.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=devices[h][2], total=devices[h][3])
    mod.nvmlDeviceGetComputeRunningProcesses = lambda h: [SimpleNamespace(pid=100 + h, usedGpuMemory=devices[h][2])]
    mod.nvmlDeviceGetGraphicsRunningProcesses = lambda h: [SimpleNamespace(pid=7, usedGpuMemory=None)]
    return mod


DEVICES = [("GPU A", "GPU-aaaa-1111", 1 * GIB, 80 * GIB), ("GPU B", "GPU-bbbb-2222", 2 * GIB, 80 * GIB),
           ("GPU C", "GPU-cccc-3333", 3 * GIB, 40 * GIB)]


@pytest.fixture
def nvml(monkeypatch):
    module = fake_pynvml(DEVICES)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


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


# -- the one NVML wrapper ---------------------------------------------------------------------------
def test_probe_and_source_share_one_nvml_session(nvml):
    session = Nvml({"CUDA_VISIBLE_DEVICES": "GPU-cccc,0"})
    assert nvml.calls["init"] == 0  # opened on first use
    probe = open_probe(nvml=session)
    source = NvmlSource(0, uuid="CCCC-3333", nvml=session)  # torch's form of NVML's "GPU-cccc-3333"
    assert nvml.calls["init"] == 1
    assert [g.name for g in probe.read().gpus] == ["GPU C", "GPU A"]
    assert (source.index, source.matched, source.read()) == (2, "uuid", {"nvml.used": 3 * GIB})
    by_index = NvmlSource(1, nvml=session)  # no UUID: CUDA's device 1 is the second visible one
    assert (by_index.index, by_index.matched) == (0, "index")
    probe.close()
    source.close()  # borrowed: the session's owner shuts it down, once
    assert nvml.calls["shutdown"] == 0
    session.close()
    session.close()
    assert nvml.calls == Counter(init=1, shutdown=1)
    with pytest.raises(SourceUnavailable, match="NVML read failed on GPU 2: NVML was shut down"):
        source.read()


def test_a_probe_or_source_opening_its_own_session_closes_it(nvml):
    NvmlProbe({}).close()
    NvmlSource(0).close()
    assert nvml.calls == Counter(init=2, shutdown=2)


def test_nvml_failures_are_reasons(monkeypatch):
    module = fake_pynvml(DEVICES)

    def lost(handle):
        raise module.NVMLError("GPU is lost")

    module.nvmlDeviceGetMemoryInfo = lost
    del module.nvmlDeviceGetName
    session = Nvml({}, module=module)
    assert session.reason == "" and session.visible() == [0, 1, 2]
    for read, message in ((lambda: session.memory(0), "GPU is lost"), (lambda: session.name(0), "nvmlDeviceGetName"),
                          (lambda: session.used(-1), "no GPU -1"), (lambda: session.memory(3), "no GPU 3")):
        with pytest.raises(NvmlError, match=message):
            read()
    module.nvmlDeviceGetCount = lambda: 1 / 0  # fails after the init: NVML is shut down again
    assert Nvml({}, module=module).reason == "division by zero"
    assert module.calls == Counter(init=2, shutdown=1)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert Nvml().reason == "nvidia-ml-py is not installed"
    with pytest.raises(NvmlError, match="not installed"):
        Nvml().visible()


def test_nvml_per_process_usage(nvml):
    session = Nvml({})
    assert session.processes(1) == {101: 2 * GIB, 7: 0}  # a figure the driver does not give counts 0


def test_uuid_forms_are_one():
    assert normalise_uuid(b"GPU-8932F937-d72c") == normalise_uuid(" 8932f937-D72C") == "8932f937-d72c"


def test_dashboard_opens_nvml_once(nvml):
    """The memory panel's probe and the memory profile's NVML source read through one session, kept
    across a restart (r) and shut down once when the app ends."""
    import dataclasses

    from dashboard_helpers import SteadyEngine, shown_step, wait_until

    from cbtui.apps.dashboard import DashboardApp
    from scenarios import load_scenario

    class OnCuda(SteadyEngine):
        def header(self):  # the profile opens its NVML source for a CUDA engine
            return dataclasses.replace(self._engine.header(), device="cuda")

    scenario = load_scenario("mixed_load")

    def build():
        return OnCuda(scenario.build_engine(device="cpu"))

    async def run():
        app = DashboardApp(scenario, build(), rebuild=build, paused=True, memory_poll_s=3600.0)
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            assert "GPU2 GPU C" in str(app.query_one("#memory-live").render())
            await pilot.press("r")
            await wait_until(pilot, lambda: len(app.metrics.steps) == 1)
            assert "nvml.used" in app.memory_profile.latest().values
            assert nvml.calls == Counter(init=1)
            await pilot.press("q")
        assert nvml.calls == Counter(init=1, shutdown=1)

    asyncio.run(run())
