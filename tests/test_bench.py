"""`cbtui bench` end to end on the CPU at a small scale, and the Hugging Face comparison path.

These check structure and like-for-like correctness, never speed: benchmarks are commands.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from cbtui.bench.metrics import RunResult, percentile
from cbtui.bench.report import COLUMNS, bench_table
from cbtui.bench.workloads import make_workload
from cbtui.cli import main

SYSTEMS = ["ours continuous", "ours static", "HF generate_batch", "HF static generate"]


def test_workloads_are_seeded_and_shaped():
    a, b = make_workload("anchor", scale=0.05, model="tiny"), make_workload("anchor", scale=0.05, model="tiny")
    assert a.prompts == b.prompts and a.max_new_tokens == b.max_new_tokens
    assert a.num_requests == round(512 * 0.05) and set(a.max_new_tokens) == {128}
    assert all(32 <= len(p) <= 1024 for p in a.prompts)
    full = make_workload("varied", model="small")
    assert full.num_requests == 256 and full.static_batch_size == 64
    assert all(16 <= n <= 256 for n in full.max_new_tokens) and len(set(full.max_new_tokens)) > 50
    assert max(t for p in full.prompts for t in p) < 32000
    with pytest.raises(ValueError, match="scale"):
        make_workload("varied", scale=0)


def test_percentiles():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 90) == 90


@pytest.mark.slow
def test_cli_varied_json_continuous_beats_static_in_steps():
    """The real `varied` workload (a 1/64 slice: 4 requests, static batches of 2) through the CLI."""
    result = CliRunner().invoke(main, ["bench", "--workload", "varied", "--scale", "0.016", "--device", "cpu",
                                       "--no-hf", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["workload"]["name"] == "varied" and report["workload"]["requests"] == 4
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu"]
    rows = {s["system"]: s for s in report["systems"]}
    assert list(rows) == SYSTEMS
    cont, static = rows["ours continuous"], rows["ours static"]
    for row in (cont, static):
        assert row["available"] and row["wall_s"] > 0 and row["output_tok_s"] > 0
        assert row["output_tokens"] == report["workload"]["output_tokens"]
        assert row["total_tok_s"] > row["output_tok_s"]
        assert set(row["ttft_ms"]) == {"p50", "p90", "p99"}
        assert row["ttft_ms"]["p50"] <= row["ttft_ms"]["p90"] <= row["ttft_ms"]["p99"]
    assert cont["steps"] < static["steps"]
    assert static["same_outputs_as_ours"] == 1.0  # greedy, fp32, same weights: same tokens
    # three runs each on the CPU (the default), ratios paired within each repetition
    assert report["repeat"] == 3 and cont["repetitions"] == static["repetitions"] == 3
    assert len(report["schedule"]) == 3 and report["schedule"][1][-1] == "ours continuous"
    pairs = [c / s for c, s in zip(cont["output_tok_s_runs"], static["output_tok_s_runs"], strict=True)]
    assert static["ours_over_this_runs"] == pytest.approx(pairs)
    assert static["ours_over_this"] == pytest.approx(sorted(pairs)[1])
    assert cont["output_tok_s_min"] <= cont["output_tok_s"] <= cont["output_tok_s_max"]
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["torch_threads_pinned"]
    assert not rows["HF generate_batch"]["available"] and "--no-hf" in rows["HF generate_batch"]["note"]


def test_cli_bad_scale_is_a_usage_error():
    result = CliRunner().invoke(main, ["bench", "--scale", "2"])
    assert result.exit_code == 2


def test_bench_group_keeps_subcommands():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0 and "--workload" in result.output and "host" in result.output


@pytest.mark.slow
def test_hf_path_tiny_and_table():
    """Hugging Face rows at a tiny scale: static generate gives our tokens; generate_batch is
    reported unavailable on the CPU, with the reason, not silently dropped."""
    pytest.importorskip("transformers")
    from cbtui.bench.run import run_systems

    workload = make_workload("varied", scale=6 / 256, model="tiny", prompt_range=(5, 40), output_range=(3, 12))
    report = run_systems(workload, device="cpu", hf=True)
    rows = {s["system"]: s for s in report["systems"]}
    assert list(rows) == SYSTEMS
    hf_static = rows["HF static generate"]
    assert hf_static["available"] and hf_static["same_outputs_as_ours"] == 1.0
    assert hf_static["output_tokens"] == workload.output_tokens
    assert hf_static["steps"] == sum(max(workload.max_new_tokens[i:i + 2]) for i in range(0, 6, 2))
    assert "output_tok_s_vs_ours" in hf_static
    cb = rows["HF generate_batch"]
    assert not cb["available"] and "CUDA" in cb["note"]

    console = Console(width=220, record=True)
    console.print(bench_table(report))
    text = console.export_text()
    for col in ("out tok/s", "min..max", "total tok/s", "ours ÷ this", "TTFT", "TPOT", "steps", "wall s"):
        assert col in text
    assert len(COLUMNS) == 10
    for name in SYSTEMS:
        assert name in text
    assert "unavailable" in text and "1.00x" in text and report["machine"]["cpu"] in text


def test_summary_of_unavailable_system_has_no_figures():
    s = RunResult("x", available=False, note="why").summary()
    assert s == {"system": "x", "available": False, "note": "why"}


def test_hf_continuous_timing_starts_at_request_creation():
    """generate_batch's own warm-up runs before its requests exist: the clock starts at the
    first request's creation and stops at the last one's end."""
    from types import SimpleNamespace

    from cbtui.bench.hf_systems import _cb_result

    workload = make_workload("anchor", scale=4 / 512, model="tiny")
    outs = [SimpleNamespace(request_id=f"r{i}", created_time=10.0 + i * 0.01, lifespan=(10.1, 12.0 + i),
                            timestamps=[10.5 + i, 11.5 + i], generated_tokens=[1, 2], error=None)
            for i in range(4)]
    result = _cb_result(workload, outs, start=5.0, end=20.0)  # the call itself began with warm-up at 5.0
    assert result.wall_s == pytest.approx(15.0 - 10.0)
    assert result.ttft_s == pytest.approx([0.5, 1.5, 2.5, 3.5])
    assert result.tpot_s == pytest.approx([1.0] * 4)
    assert result.output_tokens == 8
    stale = [SimpleNamespace(**{**vars(o), "created_time": 1.0}) for o in outs]
    fallback = _cb_result(workload, stale, start=5.0, end=20.0)
    assert fallback.wall_s == 15.0 and "warm-up" in fallback.note


def test_ours_with_decode_graphs_path_gives_the_same_tokens():
    """The bench's engine with the padded decode-graph path (uncaptured on the CPU) against eager
    decodes, on one workload: same tokens, and the note says how many steps the graphs served."""
    from cbtui.bench.ours import release, run_ours

    workload = make_workload("varied", scale=6 / 256, model="tiny", prompt_range=(5, 60), output_range=(3, 20))
    graphed, engine = run_ours(workload, "fcfs", "cpu", "float32", "sdpa", 64, decode_graphs="on")
    served = engine.runner.decode_graphs.replays
    release(engine)
    eager, engine = run_ours(workload, "fcfs", "cpu", "float32", "sdpa", 64, decode_graphs="off")
    assert engine.runner.decode_graphs is None
    release(engine)
    assert graphed.outputs == eager.outputs
    assert served > 0 and "decode steps from graphs" in graphed.note


def test_ours_measures_what_step_records_cost():
    from cbtui.bench.ours import release, run_ours

    workload = make_workload("varied", scale=4 / 256, model="tiny", prompt_range=(5, 30), output_range=(3, 9))
    result, engine = run_ours(workload, "fcfs", "cpu", "float32", "sdpa", 64)
    pool = engine.runner.kv.k_pool
    release(engine)
    assert engine.runner.kv is None and engine.runner.model is None and engine.runner.decode_graphs is None
    assert sys.getrefcount(pool) == 2  # ours and getrefcount's: nothing else keeps the pool alive
    assert 0 < result.record_share < 1 and "StepRecords" in result.note
    assert result.summary()["record_share"] == result.record_share
    split = result.summary()["step_time"]
    assert split["decode-only"]["steps"] + split["with prefill"]["steps"] == result.steps
    assert split["decode-only"]["steps"] > 0 and split["with prefill"]["steps"] > 0
    assert abs(sum(k["seconds"] for k in split.values()) - result.wall_s) < 0.5 * result.wall_s
    assert "decode-only steps" in result.note
    assert split["decode-only"]["device_seconds"] is None and "GPU forward span" not in result.note  # no GPU


def test_engine_adds_each_steps_device_span_to_its_kind():
    """Wiring of the CUDA event timer, with a stand-in that reports 10 ms per forward pass."""
    from engine import Engine, EngineConfig

    class FakeTimer:
        def __init__(self):
            self.calls, self.open = [], False

        def start(self):
            assert not self.open
            self.open = True
            self.calls.append("start")

        def stop(self):
            assert self.open
            self.open = False
            self.calls.append("stop")

        def take_seconds(self):
            return 0.01 if self.calls and self.calls[-1] == "stop" else 0.0

    engine = Engine(EngineConfig(max_tokens_per_step=32, prefill_chunk_size=16))
    assert engine.runner.device_timer is None  # the CPU has no CUDA events
    engine.runner.device_timer = timer = FakeTimer()
    engine.add_request(list(range(40)), max_new_tokens=5)
    records = [engine.step() for _ in range(7)]
    assert not engine.has_unfinished()
    assert [r.prefill_tokens > 0 for r in records] == [True] * 3 + [False] * 4
    assert [r.device_time_s for r in records] == [pytest.approx(0.01)] * 7  # each step's own span
    assert timer.calls == ["start", "stop"] * 7


def test_each_ablation_row_is_a_setting_the_engine_takes_and_leaves_out_a_piece_it_has():
    """On CUDA, ours continuous runs again once per piece of its fast path, without that piece. Each
    row's setting must be one EngineConfig accepts (else the row fails only on a GPU box), must turn
    off a piece the measured engine has, and a piece it lacks gets no row (nothing to measure)."""
    from itertools import product

    from cbtui.bench.run import ablation_rows
    from engine.config import EngineConfig

    for graphs, reads_tables in product([False, True], repeat=2):
        path = ["triton decode"] * reads_tables + ["decode graphs"] * graphs  # as the run header says
        rows = ablation_rows(path)
        names = [name for name, _ in rows]
        assert len(set(names)) == len(names) and all(n.startswith("ours continuous, ") for n in names)
        for _, setting in rows:
            config = EngineConfig(model="tiny", device="cpu", **setting)  # raises on a bad setting
            assert all(config.value(key) == value for key, value in setting.items())
        settings = [setting for _, setting in rows]
        assert ({"decode_graphs": "off"} in settings) == graphs
        assert ({"decode_attention": "gather"} in settings) == reads_tables
        assert {"overlap_steps": True} in settings  # overlap is off by default: measured on any engine
        assert len(rows) == 1 + graphs + reads_tables


def test_no_ablations_flag_reaches_the_run(monkeypatch):
    import cbtui.bench.run as run

    seen = {}
    monkeypatch.setattr(run, "run_systems", lambda *a, **k: seen.update(args=a, kwargs=k) or {})
    monkeypatch.setattr("cbtui.bench.report.bench_table", lambda report: "")
    result = CliRunner().invoke(main, ["bench", "--workload", "varied", "--scale", "0.016", "--device", "cpu",
                                       "--no-hf", "--no-ablations"])
    assert result.exit_code == 0, result.output
    assert seen["kwargs"]["ablations"] is False


@pytest.mark.parametrize("policy, decoding", [("fcfs", 12), ("static", 4)])
def test_host_bench_times_pure_decode_steps(policy, decoding):
    from cbtui.bench.host import run_host_bench

    result = run_host_bench(12, steps=3, policy=policy, static_batch_size=4)
    assert result["policy"] == policy and result["decoding_requests"] == decoding and result["steps"] == 3
    assert 0 < result["host_ms_median"] <= result["host_ms_p90"]


@pytest.mark.slow
def test_every_system_is_timed_with_the_start_up_heap_frozen(monkeypatch):
    """Each system runs inside frozen_heap (the same for all, so the comparison stays fair), and
    the heap is thawed again afterwards."""
    import gc
    from contextlib import contextmanager

    from cbtui.bench import run as bench_run
    from cbtui.run.frozen_heap import frozen_heap

    frozen_inside = []

    @contextmanager
    def watched():
        with frozen_heap():
            frozen_inside.append(gc.get_freeze_count())
            yield

    before = gc.get_freeze_count()
    monkeypatch.setattr(bench_run, "frozen_heap", watched)
    workload = make_workload("varied", scale=4 / 256, model="tiny", prompt_range=(5, 20), output_range=(2, 4))
    report = bench_run.run_systems(workload, device="cpu", hf=False)
    assert len(frozen_inside) == len(report["systems"]) == 4  # HF rows too (unavailable here)
    assert all(count > before for count in frozen_inside) and gc.get_freeze_count() == before


@pytest.mark.slow
def test_ours_says_when_compiled_flex_failed(monkeypatch):
    from cbtui.bench.ours import release, run_ours
    from engine.attention import flex

    if not flex.flex_available(torch.device("cpu")):
        pytest.skip("flex attention is not available in this torch")
    monkeypatch.setattr(flex, "_broken", {("cpu", torch.float32, 4, 2, 16): "NoValidChoicesError: none"})
    workload = make_workload("varied", scale=3 / 256, model="tiny", prompt_range=(5, 12), output_range=(2, 3))
    result, engine = run_ours(workload, "fcfs", "cpu", "float32", "flex", 64)
    release(engine)
    assert "flex (compiled kernel failed, prefill rows fell back: NoValidChoicesError: none) attention" in result.note
    monkeypatch.setattr(flex, "_broken", {})
    result, engine = run_ours(workload, "fcfs", "cpu", "float32", "flex", 64)
    release(engine)
    assert result.note.startswith("flex attention,")


def test_goal_line_reads_ours_against_generate_batch():
    from cbtui.bench.report import goal_line

    def report(hf_available=True, ours=13_000.0, hf=1_250.0):
        return {"systems": [{"system": "ours continuous", "available": True, "output_tok_s": ours},
                            {"system": "HF generate_batch", "available": hf_available, "output_tok_s": hf}]}

    assert goal_line(report()).endswith("= 10.40x, met")
    assert goal_line(report(ours=9_000.0)).endswith("= 7.20x, not met")
    assert "not measured" in goal_line(report(hf_available=False))


def test_overlapped_row_gives_ours_tokens():
    """The CUDA-only 'overlapped' row, run here on the CPU: same tokens, and the note says so."""
    from cbtui.bench.ours import release, run_ours

    workload = make_workload("varied", scale=6 / 256, model="tiny", prompt_range=(5, 60), output_range=(3, 12))
    plain, engine = run_ours(workload, "fcfs", "cpu", "float32", "sdpa", 64)
    release(engine)
    overlapped, engine = run_ours(workload, "fcfs", "cpu", "float32", "sdpa", 64, overlap_steps=True)
    release(engine)
    assert overlapped.outputs == plain.outputs and overlapped.steps == plain.steps
    assert "overlapped steps" in overlapped.note and all(t > 0 for t in overlapped.ttft_s)
    assert "up to one step late" in overlapped.note  # its times are stamped at read-back: said, not hidden


@pytest.mark.slow
def test_ablation_rows_run_after_the_systems_and_a_failing_one_is_reported():
    """Ablation rows given to the run (on CUDA, ablation_rows() picks them): each runs ours continuous
    with its setting, after the four systems; one that fails says why and the rest still run, with
    ours' tokens."""
    from cbtui.bench.run import run_systems

    workload = make_workload("varied", scale=3 / 256, model="tiny", prompt_range=(5, 12), output_range=(2, 3))
    report = run_systems(workload, device="cpu", hf=False,
                         ablations=[("ours continuous, broken", {"decode_graphs": "bogus"}),
                                    ("ours continuous, overlapped", {"overlap_steps": True})])
    rows = {s["system"]: s for s in report["systems"]}
    assert list(rows) == SYSTEMS + ["ours continuous, broken", "ours continuous, overlapped"]
    broken = rows["ours continuous, broken"]
    assert not broken["available"] and broken["note"].startswith("failed: ValueError: decode_graphs='bogus'")
    assert rows["ours continuous, overlapped"]["available"]  # the rows after it still ran
    assert rows["ours continuous, overlapped"]["same_outputs_as_ours"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", ["HF generate_batch", "ours static", "the Hugging Face copy"])
def test_an_interrupted_run_reports_what_it_measured(monkeypatch, stop_at):
    """Ctrl-C or a time limit after ours continuous: the report keeps the systems measured, names
    the one cut short and those not run, and says it was interrupted; before any, nothing to report."""
    import cbtui.bench.run as run

    real_run_ours = run.run_ours

    def run_ours(workload, policy, *args, **kwargs):
        if policy == "static" and stop_at == "ours static":
            raise KeyboardInterrupt
        return real_run_ours(workload, policy, *args, **kwargs)

    def to_hf_llama(model, **kwargs):  # our weights in a transformers model
        if stop_at == "the Hugging Face copy":
            raise KeyboardInterrupt
        return object()  # a model for generate_batch, which is interrupted before it runs it

    def generate_batch(hf, workload):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_ours", run_ours)
    monkeypatch.setattr("engine.models.hf_weights.to_hf_llama", to_hf_llama)
    monkeypatch.setattr("cbtui.bench.hf_systems.run_hf_generate_batch", generate_batch)
    # the path taken with transformers installed
    monkeypatch.setattr("cbtui.bench.hf_systems.transformers_version", lambda: "5.4")
    workload = make_workload("varied", scale=3 / 256, model="tiny", prompt_range=(5, 12), output_range=(2, 3))
    # ours static is reached with the Hugging Face rows skipped (--no-hf), the others with a model
    report = run.run_systems(workload, device="cpu", hf=stop_at != "ours static")
    assert report["interrupted"] is True
    rows = {s["system"]: s for s in report["systems"]}
    assert list(rows) == ["ours continuous", "ours static", "HF generate_batch", "HF static generate"]
    assert rows["ours continuous"]["available"] and rows["ours continuous"]["output_tok_s"] > 0
    expected = {  # stop_at -> (the row cut short, rows not run)
        "the Hugging Face copy": (set(), {"HF generate_batch", "ours static", "HF static generate"}),
        "HF generate_batch": ({"HF generate_batch"}, {"ours static", "HF static generate"}),
        "ours static": ({"ours static"}, {"HF static generate"}),  # generate_batch ran: 'skipped'
    }[stop_at]
    assert {name for name, s in rows.items() if s.get("note") == run.INTERRUPTED} == expected[0]
    assert {name for name, s in rows.items() if s.get("note") == run.NOT_RUN} == expected[1]
    table = Console(width=200, record=True)
    table.print(bench_table(report))
    assert "INTERRUPTED" in table.export_text()


@pytest.mark.slow
def test_an_uninterrupted_run_says_so():
    import cbtui.bench.run as run

    workload = make_workload("varied", scale=2 / 256, model="tiny", prompt_range=(5, 8), output_range=(2, 3))
    report = run.run_systems(workload, device="cpu", hf=False)
    assert report["interrupted"] is False and all(s["note"] not in (run.INTERRUPTED, run.NOT_RUN)
                                                  for s in report["systems"])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [15, 2])  # SIGTERM (a time limit such as `timeout`), SIGINT (Ctrl-C)
def test_bench_stopped_by_a_signal_prints_what_it_measured(signum):
    """The command as gpu_check.sh runs it: stopped while a later system runs, it still prints the
    JSON report of the systems it measured and exits with 128 + the signal."""
    import os
    import signal
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "cbtui", "bench", "--device", "cpu", "--no-hf", "--json"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        for line in proc.stderr:  # progress lines: wait until the static row has started
            if line.strip().startswith("bench: ours static"):
                break
        proc.send_signal(signal.Signals(signum))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    report = json.loads(out)
    rows = {s["system"]: s for s in report["systems"]}
    assert report["interrupted"] is True
    assert rows["ours continuous"]["available"] and rows["ours continuous"]["output_tok_s"] > 0
    assert not rows["ours static"]["available"] and "interrupted" in rows["ours static"]["note"]


def test_variants_line_puts_each_ablation_against_generate_batch():
    from cbtui.bench.report import variants_line

    systems = [{"system": "ours continuous", "available": True, "output_tok_s": 13_000.0},
               {"system": "HF generate_batch", "available": True, "output_tok_s": 1_000.0},
               {"system": "ours continuous, overlapped", "available": True, "output_tok_s": 15_500.0},
               {"system": "ours continuous, no graphs", "available": False, "note": "failed: ..."},
               {"system": "ours continuous, gather decode", "available": True, "output_tok_s": 9_000.0}]
    assert variants_line({"systems": systems}) == ("ours continuous variants vs HF generate_batch: "
                                                   "overlapped 15.50x, gather decode 9.00x")
    assert variants_line({"systems": systems[:2]}) is None  # a CPU run: no variants
    assert variants_line({"systems": [systems[0], {**systems[1], "available": False}, systems[2]]}) is None


def test_json_report_stays_clean_when_a_library_prints(monkeypatch):
    """transformers prints to stdout when its batching loop stops early: --json output must still
    parse, with the noise on stderr."""
    import cbtui.bench.run as run

    def noisy(*args, **kwargs):
        print("Returning results of generate_batch despite unexpected termination.")
        return {"systems": [], "interrupted": False}

    monkeypatch.setattr(run, "run_systems", noisy)
    result = CliRunner().invoke(main, ["bench", "--device", "cpu", "--scale", "0.016", "--no-hf", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"systems": [], "interrupted": False}
    assert "unexpected termination" in result.stderr


@pytest.mark.slow
def test_a_failed_hugging_face_copy_is_reported_and_ours_go_on(monkeypatch):
    pytest.importorskip("transformers")
    import cbtui.bench.run as run

    def broken(*args, **kwargs):
        raise TypeError("LlamaConfig got an unexpected keyword argument")

    monkeypatch.setattr("engine.models.hf_weights.to_hf_llama", broken)
    workload = make_workload("varied", scale=2 / 256, model="tiny", prompt_range=(5, 8), output_range=(2, 3))
    report = run.run_systems(workload, device="cpu", hf=True)
    rows = {s["system"]: s for s in report["systems"]}
    assert rows["ours continuous"]["available"] and rows["ours static"]["available"]
    for name in ("HF generate_batch", "HF static generate"):
        assert not rows[name]["available"] and "failed: TypeError: LlamaConfig" in rows[name]["note"], rows[name]
    assert report["interrupted"] is False


@pytest.mark.slow
def test_each_system_updates_the_report_so_far():
    import cbtui.bench.run as run

    workload = make_workload("varied", scale=2 / 256, model="tiny", prompt_range=(5, 8), output_range=(2, 3))
    snapshots = []
    final = run.run_systems(workload, device="cpu", hf=False, on_row=snapshots.append)
    assert len(snapshots) == 1 + 3  # after ours continuous, then after each further system
    measured = [[s["system"] for s in snap["systems"] if s.get("note") != run.NOT_RUN] for snap in snapshots]
    assert measured[0] == ["ours continuous"] and all(snap["interrupted"] for snap in snapshots)
    assert [len(m) for m in measured] == [1, 2, 3, 4]
    assert snapshots[-1]["systems"] == final["systems"] and final["interrupted"] is False


@pytest.mark.slow
def test_bench_killed_outright_leaves_the_systems_it_measured(tmp_path):
    """SIGKILL (a time limit's last resort) gives the bench no chance to report: --out, rewritten
    after every system, still holds what was measured."""
    import os
    import signal
    import subprocess

    out = tmp_path / "bench.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "cbtui", "bench", "--device", "cpu", "--no-hf", "--out", str(out)],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.strip().startswith("bench: ours static"):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    report = json.loads(out.read_text())
    rows = {s["system"]: s for s in report["systems"]}
    assert report["interrupted"] is True and rows["ours continuous"]["available"]
    assert not rows["ours static"]["available"]


@pytest.mark.slow
def test_out_file_holds_the_final_report(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--workload", "varied", "--scale", "0.016", "--device", "cpu",
                                       "--no-hf", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == json.loads(result.stdout)
    assert not (tmp_path / "bench.json.tmp").exists()


def test_rotations_interleave_every_system_in_turn():
    from cbtui.bench.run import rotations

    assert rotations(list("ABCD"), 3) == [list("ABCD"), list("BCDA"), list("CDAB")]
    assert rotations(list("AB"), 1) == [list("AB")]


def _fake_run(system, tok_s, outputs=((1, 2),)):
    return RunResult(system, wall_s=1.0, output_tokens=int(tok_s), prompt_tokens=10, steps=3,
                     outputs=[list(o) for o in outputs], ttft_s=[0.1], tpot_s=[0.01])


def test_a_row_combines_its_repetitions_with_ratios_paired_per_repetition():
    """Median, min and max of output tok/s; ours over it within each repetition, then the median of
    those (not the ratio of the medians); the rest of the figures from the median run."""
    from cbtui.bench.run import BASE, combine

    runs = {BASE: [_fake_run(BASE, 100), _fake_run(BASE, 300), _fake_run(BASE, 200)],
            "x": [_fake_run("x", 50), _fake_run("x", 100), _fake_run("x", 40, outputs=((9,),))]}
    row = combine("x", runs, 3)
    assert (row["output_tok_s"], row["output_tok_s_min"], row["output_tok_s_max"]) == (50, 40, 100)
    assert row["output_tok_s_runs"] == [50, 100, 40] and row["repetitions"] == 3
    assert row["ours_over_this_runs"] == [2.0, 3.0, 5.0] and row["ours_over_this"] == 3.0
    assert row["same_outputs_as_ours"] == 0.0  # the worst repetition
    base = combine(BASE, runs, 3)
    assert base["output_tok_s"] == 200 and "ours_over_this" not in base


def test_a_row_cut_short_keeps_its_finished_repetitions_and_says_so():
    from cbtui.bench.run import BASE, INTERRUPTED, NOT_RUN, combine

    runs = {BASE: [_fake_run(BASE, 100), _fake_run(BASE, 120), None],
            "x": [_fake_run("x", 50), None, None], "y": [None, None, None]}
    row = combine("x", runs, 3, running="x")
    assert row["available"] and row["repetitions"] == 1 and "1 of 3 repetitions" in row["note"]
    assert row["ours_over_this_runs"] == [2.0]  # only the repetition both have
    assert combine("y", runs, 3, running="y")["note"] == INTERRUPTED
    assert combine("y", runs, 3)["note"] == NOT_RUN


def test_a_row_whose_later_repetition_fails_keeps_the_measured_ones_and_says_why():
    """A system measured in one repetition that fails in another (out of memory, say): its row has
    the figures of the repetitions that ran and says how many failed and why; the report is still
    made (the failed run has no tok/s to take a median of)."""
    from cbtui.bench.run import BASE, combine

    oom = RunResult("x", available=False, note="failed: RuntimeError: out of memory")
    runs = {BASE: [_fake_run(BASE, 100), _fake_run(BASE, 300), _fake_run(BASE, 200)],
            "x": [_fake_run("x", 50), oom, _fake_run("x", 40)]}
    row = combine("x", runs, 3)
    assert row["available"] and row["repetitions"] == 2
    assert row["output_tok_s_runs"] == [50, 40] and row["output_tok_s"] == 45
    assert row["ours_over_this_runs"] == [2.0, 5.0]  # paired only where both ran
    assert "1 of 3 repetitions failed (failed: RuntimeError: out of memory)" in row["note"]
    runs[BASE][2] = RunResult(BASE, available=False, note="failed: RuntimeError: out of memory")
    base = combine(BASE, runs, 3)
    assert base["repetitions"] == 2 and base["output_tok_s"] == 200 and "1 of 3 repetitions failed" in base["note"]


@pytest.mark.slow
def test_repeated_systems_run_in_rotating_order_and_update_the_report(monkeypatch):
    import cbtui.bench.run as run

    order = []
    real = run.run_ours

    def spy(workload, policy="fcfs", *args, name=None, **kwargs):
        order.append(name or "ours continuous")
        return real(workload, policy, *args, name=name, **kwargs)

    monkeypatch.setattr(run, "run_ours", spy)
    workload = make_workload("varied", scale=2 / 256, model="tiny", prompt_range=(5, 8), output_range=(2, 3))
    snapshots = []
    report = run.run_systems(workload, device="cpu", hf=False, on_row=snapshots.append, repeat=3)
    # the HF rows (unavailable: --no-hf) are not run again; ours run in the rotated order
    assert order == ["ours continuous", "ours static", "ours static", "ours continuous",
                     "ours static", "ours continuous"]
    assert report["schedule"][1] == ["HF generate_batch", "ours static", "HF static generate", "ours continuous"]
    assert len(snapshots) == 1 + 3 + 2 + 2  # after every run: the HF rows only in the first repetition
    rows = {s["system"]: s for s in report["systems"]}
    assert rows["ours static"]["repetitions"] == 3 and len(rows["ours static"]["ours_over_this_runs"]) == 3
    assert rows["ours static"]["same_outputs_as_ours"] == 1.0 and report["interrupted"] is False


def test_bench_pins_one_thread_for_tiny_on_the_cpu_and_restores_it(monkeypatch):
    import cbtui.bench.run as run

    seen = []
    monkeypatch.setattr(run, "run_systems", lambda *a, **k: seen.append((torch.get_num_threads(), k["repeat"])) or {})
    threads = torch.get_num_threads()
    run.run_bench("varied", scale=0.016, device="cpu", hf=False)
    assert seen == [(1, 3)] and torch.get_num_threads() == threads


@pytest.mark.parametrize("text, scale", [("1/4", 0.25), ("0.5", 0.5), ("1", 1.0)])
def test_scale_takes_a_fraction(monkeypatch, text, scale):
    import cbtui.bench.run as run

    seen = {}
    monkeypatch.setattr(run, "run_systems", lambda workload, *a, **k: seen.update(scale=workload.scale) or {})
    monkeypatch.setattr("cbtui.bench.report.bench_table", lambda report: "")
    result = CliRunner().invoke(main, ["bench", "--scale", text, "--device", "cpu", "--no-hf"])
    assert result.exit_code == 0, result.output
    assert seen["scale"] == scale
    for bad in ("0", "3/2", "x", "1/0"):
        assert CliRunner().invoke(main, ["bench", "--scale", bad]).exit_code == 2


@pytest.mark.slow
def test_speculative_row_beside_ours_reports_acceptance_with_ours_tokens():
    """The repetitive workload gets an ngram speculative row by default: the same tokens as ours
    continuous, fewer steps, and its acceptance in the row and the note."""
    from cbtui.bench.run import run_systems, speculative_rows

    assert speculative_rows("repetitive", None) == [("ours continuous, speculative ngram",
                                                     {"speculative": "ngram", "num_speculative_tokens": 4})]
    assert speculative_rows("anchor", None) == [] and speculative_rows("repetitive", "off") == []
    workload = make_workload("repetitive", scale=4 / 256, model="tiny", output_range=(24, 24))
    for p in workload.prompts:  # each repeats a pattern of 2 to 8 tokens
        assert any(all(p[i] == p[i - n] for i in range(n, len(p))) for n in range(2, 9))
    report = run_systems(workload, device="cpu", hf=False, extra_rows=speculative_rows("repetitive", None))
    rows = {s["system"]: s for s in report["systems"]}
    spec, base = rows["ours continuous, speculative ngram"], rows["ours continuous"]
    assert spec["same_outputs_as_ours"] == 1.0 and spec["steps"] < base["steps"]
    accepted, proposed = spec["speculation"]["drafts_accepted"], spec["speculation"]["drafts_proposed"]
    assert 0 < accepted <= proposed and spec["speculation"]["tokens_per_step_per_request"] > 1
    assert f"{accepted} of {proposed} drafts accepted" in spec["note"]
    assert spec["output_tokens"] == base["output_tokens"] == 4 * 24
