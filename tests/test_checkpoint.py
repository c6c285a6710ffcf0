"""Local Hugging Face checkpoints (--model DIR): small random Llama, Qwen2 and Mistral models written
by transformers' save_pretrained with a tokenizer trained on the spot (nothing downloaded), loaded by
engine/models/checkpoint.py. Logits agree with transformers within 1e-4 in fp32, greedy outputs are identical
(under continuous batching too), requests stop at the checkpoint's EOS, and bad directories give one
line naming the file and tensor."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import our_logits

from engine import Engine, EngineConfig
from engine.models.checkpoint import CheckpointError, checkpoint_spec

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

ROOT = Path(__file__).resolve().parent.parent
REL_TOL = 1e-4
ARCHS = ("llama", "qwen2", "mistral")
TEXTS = ["Continuous batching lets new requests join.", "Hello, world!", "A KV cache stores keys",
         "The scheduler spends a token budget: decodes first, then prefill chunks. " * 3, "Paged"]


def _maker():
    spec = importlib.util.spec_from_file_location("make_test_checkpoint", ROOT / "scripts" / "make_test_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (directory, transformers model in fp32). Mistral's is sharded (an index and 5 files)."""
    make = _maker().make_checkpoint
    out = {}
    for arch in ARCHS:
        path = tmp_path_factory.mktemp(arch)
        out[arch] = path, make(path, arch, seed=1, max_shard_size="100KB" if arch == "mistral" else None)
    return out


def fp32(path, **kw) -> Engine:
    return Engine(EngineConfig(model=str(path), device="cpu", dtype="float32", attention="sdpa", **kw))


def test_the_checkpoints_have_the_shapes_under_test(checkpoints):
    llama, qwen, mistral = (checkpoint_spec(str(checkpoints[a][0])) for a in ARCHS)
    assert llama.qkv_bias and llama.o_bias and not llama.tie_embeddings
    assert dict(llama.rope_scaling)["rope_type"] == "llama3"
    assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_embeddings
    assert dict(qwen.rope_scaling)["rope_type"] == "linear"
    assert mistral.max_context == 256  # its sliding window: attention here is never windowed
    assert all(s.num_kv_heads < s.num_heads for s in (llama, qwen, mistral))  # GQA
    assert (checkpoints["mistral"][0] / "model.safetensors.index.json").is_file()
    assert len(list(checkpoints["mistral"][0].glob("*.safetensors"))) > 1
    model = fp32(checkpoints["qwen2"][0]).runner.model
    assert model.lm_head.weight is model.embed.weight  # tied: one parameter


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("length", [1, 37, 300])
def test_logits_match_transformers(checkpoints, arch, length):
    path, hf = checkpoints[arch]
    engine = fp32(path)
    rng = random.Random(length)
    tokens = [rng.randrange(engine.runner.spec.vocab_size) for _ in range(min(length, engine.runner.spec.max_context))]
    ours = our_logits(engine, tokens)
    with torch.no_grad():
        theirs = hf(torch.tensor([tokens])).logits[0]
    rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert rel < REL_TOL, f"{arch}: max relative logit difference {rel:.2e}"


def test_the_logit_check_can_fail(checkpoints):
    """Dropping Qwen2's q/k/v biases (loading it as if it had none) breaks the comparison above."""
    path, hf = checkpoints["qwen2"]
    engine = fp32(path)
    for layer in engine.runner.model.layers:
        layer.qkv_proj.bias.data.zero_()
    tokens = list(range(3, 40))
    with torch.no_grad():
        theirs = hf(torch.tensor([tokens])).logits[0]
    assert ((our_logits(engine, tokens) - theirs).abs().max() / theirs.abs().max()).item() > REL_TOL


def hf_greedy(hf, prompt: list[int], new: int) -> list[int]:
    """transformers' greedy generation with the checkpoint's own EOS (it stops there too)."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_outputs_identical_under_continuous_batching(checkpoints, arch):
    """Text prompts through the checkpoint's tokenizer, all at once in a small budget (chunked
    prefill, decodes mixed with prefills, a pool small enough to preempt), vs transformers one at a time."""
    path, hf = checkpoints[arch]
    engine = fp32(path, max_tokens_per_step=24, prefill_chunk_size=8, block_size=4, num_blocks=40)
    ids = [engine.add_request(text, max_new_tokens=20, arrival_step=i) for i, text in enumerate(TEXTS)]
    prompts = [engine.requests[rid].prompt for rid in ids]
    preempted = []
    while engine.has_unfinished():
        preempted += engine.step().preempted
    assert preempted  # the pool is small enough to preempt
    outs = engine.outputs()
    for rid, text, prompt in zip(ids, TEXTS, prompts, strict=True):
        assert prompt == engine.tokenizer.encode(text)
        assert outs[rid] == hf_greedy(hf, prompt, 20), f"{arch}: request {rid} differs"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("layout", ["paged", "dense"])
def test_exactness_with_a_loaded_model(checkpoints, arch, layout):
    """The engine's exactness property with checkpoint weights (float64): every request's greedy
    output under continuous batching, preemption included, equals the request run alone."""
    path = str(checkpoints[arch][0])
    rng = random.Random(arch)
    workload = [dict(prompt=[rng.randrange(384) for _ in range(rng.randint(1, 40))], max_new_tokens=rng.randint(1, 14),
                     arrival_step=rng.randint(0, 6)) for _ in range(6)]
    base = dict(model=path, device="cpu", dtype="float64", ignore_eos=True)
    tight = dict(kv_layout="paged", block_size=4, num_blocks=14) if layout == "paged" else dict(kv_layout="dense")
    batched = Engine(EngineConfig(**base, max_tokens_per_step=16, prefill_chunk_size=5, **tight))
    ids = [batched.add_request(**w) for w in workload]
    records = []
    while batched.has_unfinished():
        records.append(batched.step())
    if layout == "paged":
        assert any(r.preempted for r in records)  # the pool is small enough to preempt
    for rid, w in zip(ids, workload, strict=True):
        alone = Engine(EngineConfig(**base, attention="reference", kv_layout="dense", max_tokens_per_step=4096,
                                    prefill_chunk_size=4096))
        one = alone.add_request(w["prompt"], max_new_tokens=w["max_new_tokens"])
        assert batched.requests[rid].output == alone.run_until_done()[one]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_requests_stop_at_the_checkpoints_eos(checkpoints, tmp_path):
    """generation_config.json's EOS (a list here) ends a request where transformers ends it."""
    path, hf = checkpoints["llama"]
    prompt_text = TEXTS[0]
    free = fp32(path, ignore_eos=True)
    rid = free.add_request(prompt_text, max_new_tokens=12)
    run = free.run_until_done()[rid]
    stop = run[4]
    copy = _copy(path, tmp_path / "eos")
    gen = json.loads((copy / "generation_config.json").read_text())
    gen["eos_token_id"] = [stop, 1]
    (copy / "generation_config.json").write_text(json.dumps(gen))
    engine = fp32(copy)
    assert engine.scheduler.stop_ids == {stop, 1}
    rid = engine.add_request(prompt_text, max_new_tokens=12)
    out = engine.run_until_done()[rid]
    assert out == run[:run.index(stop) + 1] and len(out) < 12
    hf_copy = transformers.AutoModelForCausalLM.from_pretrained(copy, local_files_only=True, dtype=torch.float32)
    assert hf_greedy(hf_copy.eval(), free.tokenizer.encode(prompt_text), 12) == out
    with pytest.raises(ValueError, match="ignore_eos=True"):
        fp32(copy, overlap_steps=True)  # overlapped steps cannot stop at EOS: said, not ignored


def test_header_names_the_checkpoint_and_records_carry_its_text(checkpoints):
    path, _ = checkpoints["qwen2"]
    engine = fp32(path, ignore_eos=True)
    header = engine.header()
    assert header.label().startswith(f"{path.name} · fp32 · cpu · ") and header.checkpoint == str(path)
    assert header.model == path.name
    rid = engine.add_request(TEXTS[1], max_new_tokens=30)
    record = None
    while engine.has_unfinished():
        record = engine.step()
    view = next(v for v in record.requests if v.id == rid)
    assert view.output_text == engine.tokenizer.decode(view.output_tail) and view.output_text
    assert json.loads(json.dumps(record.to_dict()))["requests"][0]["output_text"] == view.output_text
    tiny = Engine(EngineConfig(model="tiny", device="cpu"))
    assert tiny.header().label().startswith("random tiny · fp32 · cpu") and tiny.header().checkpoint is None


def test_a_snapshot_in_the_hf_cache_is_named_by_its_repository(checkpoints, tmp_path):
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "0123abcd"
    _copy(checkpoints["qwen2"][0], snapshot)
    assert fp32(snapshot).header().label().startswith("Qwen2.5-0.5B-Instruct · fp32 · cpu")


def test_the_requests_table_shows_decoded_text_escaped():
    from cbtui.widgets.requests_table import output_tail
    from engine.records import RequestView

    def view(text):
        return RequestView(0, "decode", 3, 3, 4, 8, 0, 0, 1, None, 0, [300, 301, 302, 303], text)

    assert output_tail(view("the cat")) == "the cat"
    assert output_tail(view("red\x1b[31mX\n")) == "red\\x1b[31mX\\n"  # no escape sequence reaches the terminal
    assert output_tail(view("abcdefghijklm\x1bZ")) == "cdefghijklm\\x1bZ"  # the last 16 columns
    assert output_tail(view("\x1b" + "a" * 14)) == "a" * 14  # escapes whole or not at all: never "1baaa..."
    assert output_tail(view(None)) == "\u00b7" * 4  # no text: the byte decode, ids beyond a byte as dots


def test_scenario_file_names_a_checkpoint_relative_to_itself_and_chat_prompts(checkpoints, tmp_path):
    from scenarios import ScenarioError, loads

    path, _ = checkpoints["qwen2"]
    _copy(path, tmp_path / "ckpt")
    text = ('[engine]\nmodel = "ckpt"\ndevice = "cpu"\ndtype = "float32"\n'
            '[[requests]]\nprompt = "Hello, world!"\nmax_new_tokens = 4\n'
            '[[requests]]\nprompt = "Hello, world!"\nchat = true\nmax_new_tokens = 4\n')
    scenario = loads(text, tmp_path / "s.toml")
    engine = scenario.build_engine()
    assert engine.header().model == "ckpt"
    plain, chat = engine.requests[0].prompt, engine.requests[1].prompt
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ckpt", local_files_only=True)
    assert plain == tok("Hello, world!")["input_ids"]
    expected = tok.apply_chat_template([{"role": "user", "content": "Hello, world!"}], add_generation_prompt=True,
                                       tokenize=True)
    assert chat == list(expected["input_ids"] if hasattr(expected, "keys") else expected) and chat != plain
    on_a_preset = loads(text.replace('model = "ckpt"', 'model = "tiny"'), tmp_path / "s.toml").build_engine()
    assert on_a_preset.requests[0].prompt == on_a_preset.requests[1].prompt == list(b"Hello, world!")  # no template
    with pytest.raises(ScenarioError, match=r"model: .*'tinny' is neither a preset \(did you mean 'tiny'\?\)"):
        loads(text.replace('model = "ckpt"', 'model = "tinny"'), tmp_path / "s.toml")


def test_default_kv_pool_of_a_long_context_checkpoint_stays_small(tmp_path):
    """A 32k context would make eight full sequences gigabytes on the CPU: the default pool stops at 1 GiB."""
    from engine.kv.paged_store import kv_bytes_per_token
    from engine.runner.model_runner import CPU_POOL_BYTES, default_num_blocks

    path = tmp_path / "long"
    path.mkdir()
    config = dict(architectures=["Qwen2ForCausalLM"], vocab_size=1000, hidden_size=896, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                  max_position_embeddings=32768, tie_word_embeddings=True)
    (path / "config.json").write_text(json.dumps(config))
    spec = checkpoint_spec(str(path))
    per_token = kv_bytes_per_token(spec.num_layers, spec.num_kv_heads, spec.head_dim, torch.float32)
    blocks = default_num_blocks(EngineConfig(model=str(path)), torch.device("cpu"), per_token)
    assert blocks * 16 * per_token <= CPU_POOL_BYTES and blocks * 16 >= spec.max_context
    assert default_num_blocks(EngineConfig(model="tiny"), torch.device("cpu"), 512) == 8 * 4096 // 16  # as before


# -- bad directories: one line naming the file (and tensor) ---------------------------------------------

def _broken(checkpoints, tmp_path, how: str) -> Path:
    src = checkpoints["llama"][0]
    path = _copy(src, tmp_path / how)
    config = json.loads((path / "config.json").read_text())
    if how == "architecture":
        config["architectures"] = ["GPT2LMHeadModel"]
    elif how == "shape":
        config["intermediate_size"] = 100
    elif how in ("missing", "extra"):
        tensors = safetensors_torch.load_file(path / "model.safetensors")
        if how == "missing":
            del tensors["model.layers.1.mlp.up_proj.weight"]
        else:
            tensors["model.layers.0.mlp.gate_proj.bias"] = torch.zeros(96)
        safetensors_torch.save_file(tensors, path / "model.safetensors")
    elif how == "rope":
        config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (path / "config.json").write_text(json.dumps(config))
    return path


BAD = {
    "architecture": r"config\.json: architecture 'GPT2LMHeadModel' is not supported; supported: LlamaForCausalLM",
    "shape": r"model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[96, 64\], but "
             r"config\.json implies \[100, 64\]",
    "missing": r"tensor model\.layers\.1\.mlp\.up_proj\.weight is missing",
    "extra": r"model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.bias has no place",
    "rope": r"config\.json: rope scaling 'yarn' is not supported",
}


@pytest.mark.parametrize("how", sorted(BAD))
def test_bad_checkpoints_are_one_line_errors(checkpoints, tmp_path, how):
    path = _broken(checkpoints, tmp_path, how)
    with pytest.raises(CheckpointError, match=BAD[how]) as info:
        fp32(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_missing_shard_names_the_file_and_tensor(checkpoints, tmp_path):
    path = _copy(checkpoints["mistral"][0], tmp_path / "shards")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    tensor, shard = sorted(index["weight_map"].items())[-1]
    (path / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"{shard}: no such file \(it should hold tensor "):
        fp32(path)


def test_a_missing_directory_or_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere: no such directory; --model takes a preset"):
        EngineConfig(model=str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match=r"config\.json: no such file"):
        Engine(EngineConfig(model=str(tmp_path), device="cpu"))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


@pytest.mark.slow
def test_cli_bad_model_directories_exit_2_with_one_line(checkpoints, tmp_path):
    missing = cli("scenario", "mixed_load", "--headless", "--model", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith(f"cbtui: error: {tmp_path / 'nowhere'}: no such directory")
    shape = cli("scenario", "mixed_load", "--headless", "--model", str(_broken(checkpoints, tmp_path, "shape")))
    assert shape.returncode == 2 and shape.stderr.count("\n") == 1 and "Traceback" not in shape.stderr
    assert "model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape [96, 64]" in shape.stderr
    bench = cli("bench", "--model", str(_broken(checkpoints, tmp_path, "architecture")), "--device", "cpu")
    assert bench.returncode == 2 and bench.stderr.count("\n") == 1
    assert "architecture 'GPT2LMHeadModel' is not supported" in bench.stderr


@pytest.mark.slow
def test_cli_runs_a_scenario_on_a_checkpoint_and_its_recording_replays(checkpoints, tmp_path):
    from engine.records.recording import open_recording

    path, _ = checkpoints["qwen2"]
    res = cli("scenario", "mixed_load", "--json", "--steps", "12", "--model", str(path))
    assert res.returncode == 0, res.stderr
    header, *records = (json.loads(line) for line in res.stdout.splitlines())
    assert header["model"] == path.name and header["checkpoint"] == str(path)
    texts = [r["output_text"] for rec in records for r in rec["requests"] if r["generated"]]
    assert texts and all(isinstance(t, str) for t in texts)
    (tmp_path / "run.jsonl").write_text(res.stdout)
    recording = open_recording(tmp_path / "run.jsonl")  # the schema check takes the new fields
    # a real checkpoint runs in bf16 on a CPU with bf16 instructions, float32 elsewhere (dtype auto)
    dtype = {"float32": "fp32", "bfloat16": "bf16"}[recording.header.dtype]
    assert recording.header.label().startswith(f"{path.name} · {dtype} · cpu")
    assert [v.output_text for v in list(recording.records())[-1].requests] == [
        r["output_text"] for r in records[-1]["requests"]]


@pytest.mark.slow
def test_bench_runs_a_checkpoint_and_transformers_gives_the_same_tokens(checkpoints):
    """The bench on a checkpoint: its HF rows are transformers' own load of the same directory
    (nothing copied from ours), and give our greedy tokens; prompts are shortened to the context."""
    from cbtui.bench.run import run_systems
    from cbtui.bench.workloads import make_workload

    path, _ = checkpoints["qwen2"]
    workload = make_workload("varied", scale=1 / 64, model=str(path), output_range=(4, 12))
    assert max(len(p) for p in workload.prompts) + 12 <= 512
    report = run_systems(workload, "cpu", "sdpa", hf=True, ablations=False)
    rows = {row["system"]: row for row in report["systems"]}
    assert rows["ours continuous"]["available"] and rows["ours static"]["same_outputs_as_ours"] == 1.0
    assert rows["HF static generate"]["same_outputs_as_ours"] == 1.0, rows["HF static generate"]
    assert report["workload"]["model"] == str(path)
