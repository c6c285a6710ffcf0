"""Memory sources, MemoryProfiler, DetailedMemoryProfiler and MemoryLeakDetector."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.profiling.detailed_memory_profiler import DetailedMemoryProfiler
from engine.profiling.leak_detector import MemoryLeakDetector
from engine.profiling.memory_profiler import MemoryProfiler
from engine.profiling.sources import (
    FunctionSource,
    NvmlSource,
    RssSource,
    SourceUnavailable,
    TorchCudaSource,
    open_sources,
)
from scenarios import load_scenario

MiB = 1 << 20


class Scripted:
    """A fake memory source: returns the next value of a list at every read."""

    def __init__(self, values, metric="fake"):
        self.values, self.metric, self.reads = list(values), metric, 0

    def __call__(self):
        value = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        return {self.metric: value}


def scripted(values, metric="fake"):
    return FunctionSource(metric, Scripted(values, metric))


# -- sources --------------------------------------------------------------------------------------
def test_rss_source_reads_this_process():
    rss = RssSource().read()["rss"]
    assert 10 * MiB < rss < 64 * 1024 * MiB  # torch alone is tens of MiB


def test_open_sources_on_cpu():
    sources, unavailable = open_sources("cpu")
    assert [s.name for s in sources] == ["rss"]
    assert set(unavailable) == {"cuda", "nvml"} and "cpu" in unavailable["nvml"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_source_unavailable_without_gpu():
    with pytest.raises(SourceUnavailable, match="no CUDA GPU"):
        TorchCudaSource(0)


class BrokenNvml:
    """A stand-in for pynvml on a machine with the library but no driver, or a GPU that goes away."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init=False, reads_before_failure=None):
        self.fail_init, self.left = fail_init, reads_before_failure

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-0000000{handle}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetMemoryInfo(self, handle):
        if self.left is not None:
            if self.left == 0:
                raise self.NVMLError("GPU is lost")
            self.left -= 1
        return type("Info", (), {"used": 123 * MiB})()


def test_nvml_without_driver_is_unavailable_not_a_crash():
    with pytest.raises(SourceUnavailable, match="Driver Not Loaded"):
        NvmlSource(0, nvml=BrokenNvml(fail_init=True))


def test_nvml_finds_the_cuda_gpu_by_uuid():
    # CUDA_VISIBLE_DEVICES=2 makes NVML's GPU 2 CUDA's GPU 0: the UUID says which one it is.
    source = NvmlSource(0, uuid="00000002-AAAA-bbbb-cccc-dddddddddddd", nvml=BrokenNvml())
    assert (source.index, source.matched) == (2, "uuid")
    source = NvmlSource(1, uuid="not-a-known-gpu", nvml=BrokenNvml())
    assert (source.index, source.matched) == (1, "index")
    assert source.read() == {"nvml.used": 123 * MiB}


def test_nvml_without_library_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(SourceUnavailable, match="not installed"):
        NvmlSource(0)


def test_real_nvml_works_or_says_why():
    try:
        source = NvmlSource(0)
    except SourceUnavailable as exc:
        assert str(exc)
    else:
        assert source.read()["nvml.used"] > 0


def test_source_that_fails_mid_run_is_dropped_with_its_reason():
    nvml = NvmlSource(0, nvml=BrokenNvml(reads_before_failure=2))
    profiler = MemoryProfiler(sources=[scripted([1, 2, 3, 4]), nvml])
    samples = [profiler.sample(step) for step in range(4)]
    assert [sorted(s.values) for s in samples] == [["fake", "nvml.used"]] * 2 + [["fake"]] * 2
    assert profiler.unavailable == {"nvml": "NVML read failed on GPU 0: GPU is lost"}
    assert [s.name for s in profiler.sources] == ["fake"]


def test_source_raising_anything_is_dropped():
    def boom():
        raise KeyError("odd driver")

    profiler = MemoryProfiler(sources=[FunctionSource("odd", boom)])
    assert profiler.sample(0).values == {}
    assert profiler.unavailable == {"odd": "KeyError: 'odd driver'"}


# -- MemoryProfiler -------------------------------------------------------------------------------
def test_profiler_tracks_each_step_of_a_real_run():
    engine = load_scenario("decode_heavy").build_engine(device="cpu")
    fake = Scripted([100 + 10 * i for i in range(1000)])
    profiler = MemoryProfiler(sources=[RssSource(), FunctionSource("fake", fake)], max_samples=20)
    steps = 0
    while engine.has_unfinished():
        sample = profiler.observe(engine.step())
        assert sample.step == steps and sample.values["rss"] > 0
        steps += 1
    assert fake.reads == steps and len(profiler.samples) == 20  # only the last max_samples are kept
    assert profiler.series("fake")[-1] == (steps - 1, 100 + 10 * (steps - 1))
    assert profiler.summary()["fake"] == {"first": 100 + 10 * (steps - 20), "last": 100 + 10 * (steps - 1),
                                          "min": 100 + 10 * (steps - 20), "max": 100 + 10 * (steps - 1),
                                          "growth": 190}
    assert set(profiler.metrics) == {"rss", "fake"} and profiler.latest().step == steps - 1


def test_a_replay_profiles_the_recorded_figures_without_reading_any_source():
    """observe_recorded: the record's own MemoryView (a replay: the run's process is gone)."""
    from dataclasses import replace

    from engine.records import MemoryView

    engine = load_scenario("decode_heavy").build_engine(device="cpu")
    first, second = engine.step(), engine.step()
    fake = Scripted([1, 2, 3])
    profiler = MemoryProfiler(sources=[FunctionSource("fake", fake)], max_samples=10)
    assert profiler.observe_recorded(first).values == {"rss": first.memory.rss_bytes}
    on_gpu = replace(second, memory=MemoryView("cuda", 10, 20, 30, 0, 0))
    assert profiler.observe_recorded(on_gpu).values == {"rss": 30, "cuda.allocated": 10, "cuda.reserved": 20}
    assert fake.reads == 0 and profiler.series("cuda.allocated") == [(1, 10)] and profiler.latest().step == 1


def test_profiler_rejects_bad_max_samples():
    with pytest.raises(ValueError, match="max_samples"):
        MemoryProfiler(sources=[], max_samples=0)


# -- DetailedMemoryProfiler -----------------------------------------------------------------------
def test_snapshot_deltas():
    p = DetailedMemoryProfiler(sources=[scripted([100, 150, 130])])
    a = p.snapshot("start", note="before load")
    p.snapshot("loaded")
    p.snapshot("after gc")
    assert a.info == {"note": "before load"} and a.contexts == ()
    assert p.delta("start", "loaded") == {"fake": 50}
    assert p.delta("loaded", "after gc") == {"fake": -20}
    assert p.delta(a, p.latest_snapshot()) == {"fake": 30}
    with pytest.raises(KeyError, match="no snapshot named 'nope'"):
        p.delta("nope", "start")


def test_contexts_record_delta_peak_and_nesting():
    # Reads: outer start 100, inner start 110, step sample 400, inner end 120, outer end 105.
    p = DetailedMemoryProfiler(sources=[scripted([100, 110, 400, 120, 105])])
    with p.context("outer", kind="batch"), p.context("prefill-heavy") as start:
        assert start.contexts == ("outer",)
        p.sample(step=7)
    inner, outer = p.contexts
    assert (inner.name, inner.delta, inner.peak, inner.failed) == ("prefill-heavy", {"fake": 10}, {"fake": 400},
                                                                    False)
    assert (outer.name, outer.delta, outer.peak) == ("outer", {"fake": 5}, {"fake": 400})
    assert outer.start.info == {"kind": "batch"}


def test_context_summary_points_at_the_growing_context():
    # "leaky" grows 8 every time it runs and keeps it; "clean" grows 50 then gives it back.
    values, level = [], 1000
    for _ in range(5):
        values += [level, level + 8]  # leaky: start, end
        level += 8
        values += [level, level]  # clean: start, end (its peak is a sample in between)
    p = DetailedMemoryProfiler(sources=[scripted(values)], max_snapshots=2)
    for _ in range(5):
        with p.context("leaky"):
            pass
        with p.context("clean"):
            pass
    summary = p.context_summary()
    assert summary["leaky"]["count"] == 5 and summary["leaky"]["total"] == {"fake": 40}
    assert summary["leaky"]["mean"] == {"fake": 8.0} and summary["leaky"]["max"] == {"fake": 8}
    assert summary["clean"]["total"] == {"fake": 0}
    assert len(p.contexts) == 2  # only the latest are kept, but the summary counts every run


def test_context_is_recorded_when_the_body_raises():
    p = DetailedMemoryProfiler(sources=[scripted([10, 30])])
    with pytest.raises(RuntimeError, match="step failed"), p.context("step"):
        raise RuntimeError("step failed")
    (c,) = p.contexts
    assert c.failed and c.delta == {"fake": 20}
    assert p._open == []


# -- MemoryLeakDetector on synthetic series -------------------------------------------------------
def noisy(base, slope, n, noise, seed=0):
    rng = random.Random(seed)
    return [base + slope * i + rng.uniform(-noise, noise) for i in range(n)]


DETECTOR = MemoryLeakDetector(window=32, min_growth_bytes=8 * MiB, segments=4)


def test_planted_linear_leak_is_flagged():
    # Warm-up plateau, then 1 MiB per step with 2 MiB of jitter: 31 MiB over the window.
    series = [500 * MiB] * 20 + noisy(500 * MiB, MiB, 40, 2 * MiB)
    verdict = DETECTOR.check(series, metric="rss")
    assert verdict and verdict.metric == "rss" and verdict.samples == 32
    assert verdict.slope_bytes_per_sample == pytest.approx(MiB, rel=0.2)
    assert "every part" in verdict.reason


@pytest.mark.parametrize("label, series", [
    ("flat with jitter", noisy(500 * MiB, 0, 200, 4 * MiB)),
    ("warm-up growth that stopped", [400 * MiB + i * 4 * MiB for i in range(30)] + [520 * MiB] * 20),
    ("one jump then a plateau", [500 * MiB] * 16 + [700 * MiB] * 16),
    ("sawtooth (allocate, free)", [(500 + 40 * (i % 8)) * MiB for i in range(64)]),
    ("slow growth below the threshold", noisy(500 * MiB, MiB // 8, 64, MiB // 4)),
])
def test_clean_series_are_not_flagged(label, series):
    assert not DETECTOR.check(series), label


def test_too_few_samples_are_not_judged():
    verdict = DETECTOR.check([MiB * i * 10 for i in range(31)])
    assert not verdict and "too few" in verdict.reason


@pytest.mark.parametrize("kwargs, message", [
    (dict(window=7, segments=4), "window"), (dict(segments=1), "segments"),
    (dict(min_growth_bytes=0), "min_growth_bytes")])
def test_detector_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemoryLeakDetector(**kwargs)


# -- on a real engine run, with real RSS ----------------------------------------------------------
def run_with_rss(leak_bytes_per_step: int, steps: int = 64):
    """Steps kv_pressure (restarting it when done) and samples RSS after each step; the planted leak
    keeps a tensor of `leak_bytes_per_step` per step alive, as a forgotten per-step cache would."""
    scenario = load_scenario("kv_pressure")
    engine = scenario.build_engine(device="cpu")
    profiler = DetailedMemoryProfiler(sources=[RssSource()])
    leaked = []
    for step in range(steps):
        if not engine.has_unfinished():
            engine = scenario.build_engine(device="cpu")
        with profiler.context("step"):
            record = engine.step()
            if leak_bytes_per_step:
                leaked.append(torch.full((leak_bytes_per_step // 4,), float(step)))  # touched pages count
        profiler.observe(record)
    return profiler


# RSS counts pages, and the heap reuses pages freed by earlier tests without RSS moving: the real-RSS
# runs go in a fresh process, where every planted byte needs new pages.
RSS_RUNS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import conftest  # the tests' torch settings
import test_memory_profiling as t
detector = t.MemoryLeakDetector(window=32, min_growth_bytes=16 * t.MiB)
leaky = t.run_with_rss(2 * t.MiB)
clean = t.run_with_rss(0, steps=160)  # two full runs of the scenario
out = {}
for name, p in (("leaky", leaky), ("clean", clean)):
    v = p.check_leaks(detector)["rss"]
    out[name] = dict(leaking=v.leaking, slope=v.slope_bytes_per_sample, samples=v.samples, reason=v.reason,
                     step_total=p.context_summary()["step"]["total"]["rss"])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def rss_runs():
    res = subprocess.run([sys.executable, "-c", RSS_RUNS, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.slow
def test_planted_leak_in_a_real_run_is_flagged(rss_runs):
    leaky = rss_runs["leaky"]
    assert leaky["leaking"], leaky["reason"]
    assert leaky["slope"] == pytest.approx(2 * MiB, rel=0.25)
    # The per-step context keeps what it grew: most of the 64 planted tensors.
    assert leaky["step_total"] > 64 * 2 * MiB * 0.75


def test_clean_long_run_is_not_flagged(rss_runs):
    clean = rss_runs["clean"]
    assert not clean["leaking"], clean["reason"]
    assert clean["samples"] == 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_planted_leak_on_cuda_is_seen_by_allocator_and_nvml():
    engine = load_scenario("kv_pressure").build_engine(device="cuda")
    sources, unavailable = open_sources(engine.runner.device)
    assert {s.name for s in sources} >= {"rss", "cuda"}, unavailable
    for source in sources:
        if source.name == "nvml":  # torch's UUID text and NVML's must match, or a wrong GPU may be read
            assert source.matched == "uuid", torch.cuda.get_device_properties(engine.runner.device).uuid
    profiler = MemoryProfiler(sources=sources)
    leaked = []
    for _ in range(48):
        if not engine.has_unfinished():
            break
        record = engine.step()
        leaked.append(torch.ones(8 * MiB // 4, device=engine.runner.device))  # 8 MiB a step
        profiler.observe(record)
    verdicts = profiler.check_leaks(MemoryLeakDetector(window=24, min_growth_bytes=64 * MiB))
    assert verdicts["cuda.allocated"], verdicts["cuda.allocated"].reason
    if "nvml.used" in verdicts:  # the allocator reserves in 2 MiB+ segments, the driver sees them
        assert verdicts["nvml.used"], verdicts["nvml.used"].reason


def test_rss_reading_follows_growth_and_forks():
    import mmap
    import os

    from engine.profiling.memory import process_rss_bytes

    before = process_rss_bytes()
    # Fresh pages from the kernel (an anonymous map): a bytearray may be served from memory the
    # allocator already holds, resident, after a long test session, and RSS would not move.
    block = mmap.mmap(-1, 64 * 1024 * 1024)
    for offset in range(0, len(block), mmap.PAGESIZE):  # touch every page
        block[offset] = 1
    assert process_rss_bytes() >= before + 48 * 1024 * 1024
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child frees the block: its own reading must drop, not the parent's
        block.close()
        os.write(write, str(process_rss_bytes()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = int(os.read(read, 64))
    assert child < process_rss_bytes() - 32 * 1024 * 1024  # the child's own memory, not the parent's


def test_step_record_reads_the_cuda_allocator_in_one_call(monkeypatch):
    """The record's CUDA figures come from one nested-stats call, read at the right keys (never
    memory_allocated()/memory_reserved(), which flatten every statistic in Python, twice a step)."""
    from engine.profiling import memory

    calls = []
    nested = {"allocated_bytes": {"all": {"current": 7 * MiB, "peak": 9 * MiB}, "small_pool": {"current": 1}},
              "reserved_bytes": {"all": {"current": 12 * MiB, "peak": 12 * MiB}}}
    monkeypatch.setattr(torch.cuda, "memory_stats_as_nested_dict", lambda device=None: calls.append(device) or nested)

    def flattening(*a, **k):
        raise AssertionError("flattening memory stats call on the step path")

    monkeypatch.setattr(torch.cuda, "memory_allocated", flattening)
    monkeypatch.setattr(torch.cuda, "memory_reserved", flattening)
    view = memory.memory_view(torch.device("cuda"), weight_bytes=3, kv_pool_bytes=4)
    assert (view.source, view.allocated_bytes, view.reserved_bytes) == ("cuda", 7 * MiB, 12 * MiB)
    assert len(calls) == 1
    monkeypatch.setattr(torch.cuda, "memory_stats_as_nested_dict", lambda device=None: {})  # not initialised
    assert memory.cuda_allocator_bytes(torch.device("cuda")) == (0, 0)
