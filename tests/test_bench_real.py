"""`cbtui bench real`: its workload, its flop count, its report and its breakdown, on the tiny preset.

Structure and arithmetic only, never speed: benchmarks are commands.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import CPP_DECODE

from cbtui.bench.breakdown import PARTS, breakdown_table, run_breakdown
from cbtui.bench.chat_questions import CHAT_QUESTIONS
from cbtui.bench.flops import layer_weights, matmul_speed, run_flops
from cbtui.bench.real import chat_workload, machine_share, run_real
from cbtui.bench.real_report import size_lines
from cbtui.cli import main
from engine.models.llama import PRESETS
from engine.runner.cpu_dtype import default_cpu_dtype


def test_chat_workload_asks_the_questions_in_order_and_wraps_past_the_end():
    w = chat_workload("tiny", len(CHAT_QUESTIONS) + 2, 5)
    assert w.prompts[0] == list(CHAT_QUESTIONS[0].encode())  # a preset has no chat template: the bytes
    assert w.prompts[len(CHAT_QUESTIONS)] == w.prompts[0]
    assert w.max_new_tokens == [5] * w.num_requests and w.static_batch_size == w.num_requests
    assert len(set(CHAT_QUESTIONS)) == len(CHAT_QUESTIONS) >= 64


def test_chat_workload_refuses_more_tokens_than_the_context():
    with pytest.raises(ValueError, match="max_new_tokens=100000"):
        chat_workload("tiny", 2, 100000)


def test_flops_count_every_fed_token_and_each_sampled_token_once():
    spec = PRESETS["tiny"]
    per_token = 2 * layer_weights(spec) * spec.num_layers
    per_key = 4 * spec.num_heads * spec.head_dim * spec.num_layers
    head = 2 * spec.hidden_size * spec.vocab_size
    f = run_flops(spec, [[1, 2, 3]], [2])  # feeds 3 prompt tokens and 1 generated one; samples 2
    assert f["prefill"] == 3 * per_token + per_key * (1 + 2 + 3) + head
    assert f["decode"] == per_token + per_key * 4 + head
    assert f["total"] == f["prefill"] + f["decode"] and f["prefill_rows"] == 3 and f["decode_rows"] == 1
    hidden, inter = spec.hidden_size, spec.intermediate_size
    assert layer_weights(spec) == hidden * (spec.num_heads + 2 * spec.num_kv_heads) * spec.head_dim + \
        spec.num_heads * spec.head_dim * hidden + 3 * hidden * inter


def test_matmul_speed_is_positive_and_says_its_shape():
    m = matmul_speed(PRESETS["tiny"], 4, "float32", repeats=2)
    assert m["rows"] == 4 and m["dtype"] == "float32" and m["gflop_s"] > 0
    assert m["linear"] == "plain"  # float32 weights are never packed


@pytest.mark.parametrize("packed_is_faster", [True, False])
def test_matmul_speed_times_packed_bf16_weights_too_and_the_faster_counts(monkeypatch, packed_is_faster):
    """The yardstick is the machine's best linear: packed weights are timed beside plain ones."""
    import time

    import cbtui.bench.flops as flops

    monkeypatch.setattr(flops, "packing_problem", lambda device, dtype: None)
    packed = []

    def fake_pack(module):
        packed.append(module)
        module.forward = (lambda x: x) if packed_is_faster else (lambda x: time.sleep(0.002))
        return 1
    monkeypatch.setattr(flops, "pack_linear_weights", fake_pack)
    m = matmul_speed(PRESETS["tiny"], 4, "bfloat16", repeats=1)
    assert len(packed) == PRESETS["tiny"].num_layers * 4 + 1  # every projection and the output head
    assert m["linear"] == ("packed" if packed_is_faster else "plain") and m["gflop_s"] > 0


def test_goal_needs_says_what_share_of_the_matmul_the_goal_asks_for():
    from cbtui.bench.real_report import goal_needs

    # the run's matmuls take 0.25 * 8 = 2 s at the machine's speed; 3x over 12 s leaves 4 s
    line = goal_needs({"share": 0.25, "wall_s": 8.0}, 12.0, 3.0)
    assert "within 4.00 s" in line and "50% of the machine's matmul" in line and "2.00 s" in line


def test_size_lines_at_a_goal_size_say_the_ratio_and_what_the_goal_asks():
    size = {"requests": 16, "flops": {"prefill": 4e9, "decode": 2e9, "total": 6e9},
            "matmul": {"before": [{"gflop_s": 2.0}, {"gflop_s": 4.0}], "after": [{"gflop_s": 2.0}, {"gflop_s": 4.0}]},
            "report": {"systems": [
                {"system": "ours continuous", "available": True, "wall_s": 4.0},
                {"system": "HF static generate", "available": True, "wall_s": 6.0, "ours_over_this": 1.5,
                 "ours_over_this_runs": [1.4, 1.5, 1.6]}]}}
    lines = "\n".join(size_lines(size))
    assert "1.50x median of paired runs [1.40, 1.50, 1.60] (goal >= 2x: not met)" in lines
    # matmuls alone: 2 s (1 + 1); 2x over 6 s leaves 3 s
    assert "the 2x goal asks for ours within 3.00 s: 67% of the machine's matmul" in lines


def test_machine_share_is_the_ideal_time_over_the_wall_time():
    size = {"requests": 2, "flops": {"prefill": 4e9, "decode": 2e9, "total": 6e9},
            "matmul": {"before": [{"gflop_s": 1.0}, {"gflop_s": 4.0}], "after": [{"gflop_s": 2.0}, {"gflop_s": 2.0}]},
            "report": {"systems": [{"system": "ours continuous", "available": True, "wall_s": 4.0}]}}
    share = machine_share(size)
    assert share is not None
    # decode at the faster decode speed (2), prefill at the faster prefill speed (4): 1 s + 1 s ideal
    assert share["share"] == pytest.approx(2.0 / 4.0)
    assert share["achieved_gflop_s"] == pytest.approx(1.5) and share["matmul_gflop_s"] == pytest.approx(3.0)
    size["report"]["systems"][0]["available"] = False
    assert machine_share(size) is None


def test_run_real_on_a_preset_reports_each_request_count_and_restores_threads():
    threads = torch.get_num_threads()
    report = run_real("tiny", (2, 3), max_new_tokens=3, repeat=1, dtype="float32", threads=1, hf=False,
                      compare_dtype="float64", gather_decode=True)
    assert torch.get_num_threads() == threads
    assert [s["requests"] for s in report["sizes"]] == [2, 3]
    assert len(report["load_start"]) == 3 and len(report["load_end"]) == 3 and report["threads"] == 1
    size = report["sizes"][0]
    rows = {r["system"]: r for r in size["report"]["systems"]}
    assert rows["ours continuous"]["output_tokens"] == 2 * 3
    assert rows["ours static"]["same_outputs_as_ours"] == 1.0
    assert not rows["HF static generate"]["available"]
    assert rows["ours continuous, float64"]["available"]
    gathered = rows["ours continuous, gather decode"]
    assert gathered["available"] and "gather decode attention" in gathered["note"]
    assert ("cpp decode attention" in rows["ours continuous"]["note"]) == (CPP_DECODE != "")
    assert len(size["matmul"]["before"]) == 2 and size["flops"]["total"] > 0
    lines = "\n".join(size_lines(size))
    assert "GFLOP/s" in lines and "share" in lines and "ours continuous, float64" in lines
    assert "llama" in report["llama_cpp"]


def test_breakdown_parts_add_up_to_the_step():
    rows = run_breakdown("tiny", (3,), 4, "float32", 1)
    row = rows[0]
    assert row["steps"]["prefill"] >= 1 and row["steps"]["decode"] >= 1
    for kind in ("prefill", "decode"):
        ms = row["ms_per_step"][kind]
        assert sum(ms[p] for p in PARTS) == pytest.approx(ms["step"])
        assert ms["linear layers"] > 0 and ms["attention"] > 0 and ms["lm head"] > 0 and ms["sampling"] > 0
    from engine.runner import model_runner
    assert model_runner.greedy_batch.__name__ == "greedy_batch"  # the timing wrapper is gone
    assert breakdown_table(rows).row_count == 2


def test_cli_real_json_on_a_preset():
    result = CliRunner().invoke(main, ["bench", "real", "--model", "tiny", "--requests", "2", "--max-new-tokens", "2",
                                       "--repeats", "1", "--no-hf", "--gather-decode", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dtype"] == "float32" and report["sizes"][0]["requests"] == 2
    systems = [s["system"] for s in report["sizes"][0]["report"]["systems"]]
    assert "ours continuous, gather decode" in systems


def test_cli_real_unknown_model_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["bench", "real", "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_random_presets_stay_float32_on_any_cpu():
    assert default_cpu_dtype("tiny") == "float32"


def test_auto_dtype_is_bfloat16_for_a_real_model_only_where_the_cpu_has_bf16(monkeypatch, tmp_path):
    from engine.runner import cpu_dtype
    from engine.runner.model_runner import resolve_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(cpu_dtype, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert resolve_dtype("auto", cpu, str(tmp_path)) == torch.bfloat16  # not a preset: a checkpoint
    assert resolve_dtype("auto", cpu, "tiny") == torch.float32
    assert resolve_dtype("float32", cpu, str(tmp_path)) == torch.float32
    monkeypatch.setattr(cpu_dtype, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_dtype("auto", cpu, str(tmp_path)) == torch.float32
    assert resolve_dtype("auto", cpu) == torch.float32


@pytest.mark.parametrize("preset, expected", [({}, "unset 30000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE unset"),
                                              ({"GOMP_SPINCOUNT": "7"}, "unset 7")])
def test_importing_cbtui_bounds_openmp_spinning_before_torch_loads_unless_the_user_chose(preset, expected):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(preset)
    code = ("import sys, os, cbtui; assert 'torch' not in sys.modules; import torch; "
            "print(os.environ.get('OMP_WAIT_POLICY', 'unset'), os.environ.get('GOMP_SPINCOUNT', 'unset'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def _rewrite_eos(directory, eos: int) -> None:
    for name in ("config.json", "generation_config.json"):
        path = directory / name
        if path.is_file():
            data = json.loads(path.read_text())
            data["eos_token_id"] = eos
            path.write_text(json.dumps(data))


def test_stop_at_eos_ends_every_system_at_the_models_end_of_sequence(tmp_path):
    """--stop-at-eos: requests end where they sample the model's end of sequence, in ours and in
    transformers' padded generate alike (the same tokens in float32, the stop token kept), and the
    lines say the goals are for fixed lengths."""
    pytest.importorskip("transformers")
    from helpers import checkpoint_maker

    checkpoint_maker().make_checkpoint(tmp_path, "llama", seed=3)
    fixed = run_real(str(tmp_path), (4,), max_new_tokens=8, repeat=1, dtype="float32", threads=1, hf=False)
    ours = fixed["sizes"][0]["report"]["systems"][0]
    assert ours["system"] == "ours continuous" and ours["output_tokens"] == 4 * 8
    # an end of sequence the random model samples mid-answer: the fourth token of the first request
    workload = chat_workload(str(tmp_path), 4, 8)
    from cbtui.bench.ours import run_ours

    first_run, engine = run_ours(workload, device="cpu", dtype="float32")
    eos = first_run.outputs[0][3]
    _rewrite_eos(tmp_path, eos)
    expected = [out[:out.index(eos) + 1] if eos in out else out for out in first_run.outputs]
    assert len(expected[0]) == 4

    report = run_real(str(tmp_path), (4,), max_new_tokens=8, repeat=1, dtype="float32", threads=1,
                      generate_batch=True, stop_at_eos=True)
    assert report["stop_at_eos"] is True
    from cbtui.bench.real_report import heading

    assert "each request stops at end of sequence, at most 8 new tokens" in heading(report)
    assert "end-of-sequence ignored" in heading(fixed)
    size = report["sizes"][0]
    rows = {r["system"]: r for r in size["report"]["systems"]}
    assert rows["ours continuous"]["output_tokens"] == sum(map(len, expected)) < 4 * 8
    assert rows["HF static generate"]["available"] and rows["HF static generate"]["same_outputs_as_ours"] == 1.0
    assert rows["HF static generate"]["output_tokens"] == sum(map(len, expected))
    assert rows["ours static"]["same_outputs_as_ours"] == 1.0
    assert not rows["HF generate_batch"]["available"]  # fixed lengths only
    assert size["flops"] is None and machine_share(size) is None
    lines = "\n".join(size_lines(size, stop_at_eos=True))
    assert "the goals are for fixed lengths" in lines and "fixed lengths only" in lines
    assert "goal >=" not in lines


def test_stop_at_eos_refuses_a_model_without_an_end_of_sequence():
    with pytest.raises(ValueError, match="no end-of-sequence token"):
        chat_workload("tiny", 2, 4, stop_at_eos=True)
