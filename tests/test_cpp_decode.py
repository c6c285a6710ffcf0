"""The CPU decode kernel (cpu_kernels/csrc/paged_decode.cpp, called by attention/paged_decode_cpp.py):
checked against the block gather, bit for bit alone and in a batch, against bad input, and in the
engine (its choice, its label, greedy tokens equal to the gather's and to each request alone)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from helpers import exact_config, run_alone, run_batched

from engine import Engine, EngineConfig
from engine.attention import decode_kernel, paged_decode_cpp
from engine.attention.decode_kernel import CppDecode, GatherDecode, choose_decode_attention
from engine.attention.paged_decode import paged_decode_attention
from engine.attention.paged_decode_cpp import paged_decode_cpp as kernel
from engine.cpu_kernels import build as build_cpu_kernels
from engine.cpu_kernels import loader

CPU = torch.device("cpu")
problem = build_cpu_kernels()
pytestmark = pytest.mark.skipif(problem is not None, reason=f"the C++ decode kernel cannot be built here: {problem}")


def random_case(rng: random.Random, heads: int, kv_heads: int, d: int, bs: int, lens: list[int],
                dtype=torch.float32):
    """Blocks handed out in a shuffled order, tables padded past each decode's blocks with garbage
    in range (as the engine's step tables are), and q a non-contiguous slice of a fused projection."""
    num_blocks = sum(-(-length // bs) for length in lens) + 4
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-length // bs))] for length in lens]
    width = max(map(len, tables)) + 2
    padded = torch.tensor([t + [rng.randrange(num_blocks) for _ in range(width - len(t))] for t in tables])
    k = torch.randn(num_blocks * bs, kv_heads, d).to(dtype)
    v = torch.randn(num_blocks * bs, kv_heads, d).to(dtype)
    q = torch.randn(len(lens), heads + 2 * kv_heads, d).to(dtype)[:, :heads]
    return q, k, v, padded, torch.tensor(lens)


SHAPES = [(4, 2, 16, 8), (14, 2, 64, 16), (8, 8, 32, 4), (6, 1, 16, 16), (9, 3, 64, 16), (8, 2, 128, 5),
          (4, 1, 256, 1)]
LENGTHS = [1, 2, 15, 16, 17, 31, 33, 100, 250]


@pytest.mark.parametrize("heads, kv_heads, d, bs", SHAPES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-12), (torch.bfloat16, 2e-2),
                                        (torch.float16, 2e-3)])
def test_kernel_matches_the_gather(heads, kv_heads, d, bs, dtype, tol):
    q, k, v, tables, lens = random_case(random.Random(d * bs + heads), heads, kv_heads, d, bs, LENGTHS, dtype)
    got = kernel(q, k, v, tables, lens, bs)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    want = paged_decode_attention(q.to(wide), k.to(wide), v.to(wide), tables, lens, bs)
    assert got.dtype == dtype and got.shape == (len(LENGTHS), heads, d)
    torch.testing.assert_close(got.to(wide), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decode_is_the_same_bits_alone_and_in_any_batch(dtype):
    """What exactness rests on: a decode's output depends on its own keys only."""
    q, k, v, tables, lens = random_case(random.Random(3), 9, 3, 64, 16, [5, 40, 300, 17, 64, 1], dtype)
    together = kernel(q, k, v, tables, lens, 16)
    for i in range(len(lens)):
        alone = kernel(q[i:i + 1], k, v, tables[i:i + 1, :-(-int(lens[i]) // 16)], lens[i:i + 1], 16)
        assert torch.equal(alone[0], together[i])
    flipped = kernel(q.flip(0), k, v, tables.flip(0), lens.flip(0), 16)
    assert torch.equal(flipped.flip(0), together)


def test_bad_input_is_refused_with_what_is_wrong():
    q, k, v, tables, lens = random_case(random.Random(1), 4, 2, 16, 8, [10, 20])
    with pytest.raises(RuntimeError, match="key length 99 of decode 1 does not fit its table"):
        kernel(q, k, v, tables, torch.tensor([10, 99]), 8)
    bad = tables.clone()
    bad[0, 0] = 10_000
    with pytest.raises(RuntimeError, match="decode 0 names block 10000 outside the pool"):
        kernel(q, k, v, bad, lens, 8)
    with pytest.raises(RuntimeError, match="tables must be int64"):
        kernel(q, k, v, tables.int(), lens, 8)
    with pytest.raises(RuntimeError, match="must share a dtype"):
        kernel(q.double(), k, v, tables, lens, 8)
    with pytest.raises(RuntimeError, match="head size 24 is not 16, 32, 64, 128 or 256"):
        pool = torch.randn(k.shape[0], 2, 24)
        kernel(torch.randn(2, 4, 24), pool, pool, tables, lens, 8)


def test_choice_and_why_not():
    assert isinstance(choose_decode_attention("auto", CPU, torch.float32, 64), CppDecode)
    assert isinstance(choose_decode_attention("gather", CPU, torch.float32, 64), GatherDecode)
    fallback = choose_decode_attention("auto", CPU, torch.float32, 24)
    assert isinstance(fallback, GatherDecode) and "head size" in fallback.unused_kernel
    with pytest.raises(ValueError, match=r"decode_attention='cpp' cannot run: it needs a head size of 16"):
        choose_decode_attention("cpp", CPU, torch.float32, 24)
    assert "runs on the CPU" in paged_decode_cpp.cpp_problem(torch.device("cuda"), torch.float32, 64)
    with pytest.raises(ValueError, match="decode_attention='fast' is not allowed"):
        EngineConfig(decode_attention="fast")


def test_a_failed_build_leaves_the_gather_with_the_reason(monkeypatch):
    monkeypatch.setattr(loader, "_built", False)
    monkeypatch.setattr(loader, "_build_error", "building it failed: OSError: no c++ compiler")
    chosen = choose_decode_attention("auto", CPU, torch.bfloat16, 64)
    assert isinstance(chosen, GatherDecode) and chosen.unused_kernel == (
        "cpp decode kernel: building it failed: OSError: no c++ compiler")
    with pytest.raises(ValueError, match="decode_attention='cpp' cannot run: building it failed"):
        Engine(EngineConfig(model="tiny", device="cpu", decode_attention="cpp"))
    with pytest.raises(RuntimeError, match="not available: building it failed"):
        decode_kernel.paged_decode_cpp(*random_case(random.Random(0), 4, 2, 16, 8, [3]), 8)


def test_the_failure_is_told_in_one_line(monkeypatch):
    def broken():
        raise RuntimeError("Error building extension 'x':\n[1/2] c++ ... \nFAILED: x.o")

    monkeypatch.setattr(loader, "_built", False)
    monkeypatch.setattr(loader, "_build_error", None)
    monkeypatch.setattr(loader, "_load", broken)
    assert loader.build() == "building it failed: RuntimeError: Error building extension 'x':"


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next():
    """torch waits forever on its lock file; a build that was killed leaves one behind."""
    name = loader.library_name()
    (loader.build_folder(name) / "lock").write_text("")
    code = "from engine.cpu_kernels import build; print(build())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr[-2000:]


def test_the_library_name_follows_the_cpu_and_the_sources(monkeypatch, tmp_path):
    """Two versions of cbtui (other sources) never rebuild one library under each other."""
    name = loader.library_name()
    extra = tmp_path / "extra.cpp"
    extra.write_text("// another kernel\n")
    monkeypatch.setattr(loader, "SOURCES", [*loader.SOURCES, extra])
    other = loader.library_name()
    assert other != name and other.split("_")[3] == name.split("_")[3] == loader.cpu_fingerprint()


def test_the_engine_uses_it_and_says_so():
    eng = Engine(EngineConfig(model="tiny", device="cpu", dtype="float32"))
    assert eng.runner.decode_attention.name == "cpp" and "cpp decode" in eng.header().label()
    gathered = Engine(EngineConfig(model="tiny", device="cpu", dtype="float32", decode_attention="gather"))
    assert "cpp decode" not in gathered.header().label()


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_greedy_tokens_under_batching_equal_each_request_alone(block_size):
    workload = [{"prompt": [(11 * i + j) % 256 for j in range(3 + 7 * i)], "max_new_tokens": 10 + i,
                 "arrival_step": i % 3} for i in range(6)]
    config = exact_config(attention="sdpa", kv_layout="paged", block_size=block_size, decode_attention="cpp",
                          max_tokens_per_step=16, prefill_chunk_size=8)
    outputs, records, eng = run_batched(config, workload)
    assert eng.runner.decode_attention.name == "cpp"
    assert any(r.decode_tokens > 1 for r in records)  # decodes did share steps
    assert outputs == [run_alone(w["prompt"], w["max_new_tokens"]) for w in workload]
