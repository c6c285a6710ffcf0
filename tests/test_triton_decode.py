"""The Triton paged-decode kernel (attention/paged_decode_triton.py). Without a GPU it runs in
Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so its indexing, masking and
online softmax are checked on the CPU against the block gather, in float32 (the interpreter's
numpy has no bfloat16 matmul: bf16 is checked compiled, in tests/test_cuda.py)."""

from __future__ import annotations

import random

import pytest
import torch

from engine import Engine, EngineConfig
from engine.attention import decode_kernel
from engine.attention.decode_kernel import GatherDecode, TritonDecode, choose_decode_attention
from engine.attention.paged_decode import paged_decode_attention

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]')")
# Interpreted on the CPU; compiled where there is a GPU (the interpreter is off there).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_case(rng: random.Random, heads: int, kv_heads: int, d: int, bs: int, n: int, max_len: int,
                min_len: int = 1):
    num_blocks = n * (-(-max_len // bs)) + 4
    lens = [rng.randint(min_len, max_len) for _ in range(n)]
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-length // bs))] for length in lens]
    width = max(map(len, tables)) + 2  # columns past every table: garbage in range
    padded = torch.tensor([t + [rng.randrange(num_blocks) for _ in range(width - len(t))] for t in tables])
    k = torch.randn(num_blocks * bs, kv_heads, d)
    v = torch.randn(num_blocks * bs, kv_heads, d)
    q = torch.randn(n, heads, d)
    return tuple(x.to(DEVICE) for x in (q, k, v, padded, torch.tensor(lens)))


@pytest.mark.parametrize("heads, kv_heads, d, bs", [(4, 2, 16, 8), (14, 2, 64, 16), (8, 8, 32, 4), (6, 1, 16, 16)])
def test_kernel_matches_the_gather(heads, kv_heads, d, bs):
    from engine.attention.paged_decode_triton import paged_decode_triton

    rng = random.Random(heads * 100 + d + bs)
    q, k, v, tables, lens = random_case(rng, heads, kv_heads, d, bs, n=5, max_len=150)  # > 2 loop turns
    got = paged_decode_triton(q, k, v, tables, lens, bs)
    torch.testing.assert_close(got, paged_decode_attention(q, k, v, tables, lens, bs), rtol=1e-5, atol=1e-5)


def test_kernel_reads_only_each_requests_own_blocks():
    """Poison every slot no request owns: a read outside a request's keys would show as NaN."""
    from engine.attention.paged_decode_triton import paged_decode_triton

    q, k, v, tables, lens = random_case(random.Random(1), 4, 2, 16, 8, n=4, max_len=70)
    owned = torch.zeros(k.shape[0], dtype=torch.bool, device=DEVICE)
    for row, length in zip(tables.tolist(), lens.tolist(), strict=True):
        for p in range(length):
            owned[row[p // 8] * 8 + p % 8] = True
    k[~owned], v[~owned] = float("nan"), float("nan")
    out = paged_decode_triton(q, k, v, tables, lens, 8)
    assert torch.isfinite(out).all()


def _with_kernel(engine: Engine, decode) -> Engine:
    """The same engine with another decode attention (the kernel cannot be chosen off CUDA)."""
    engine.runner.decode_attention = decode
    runner = engine.runner
    runner.layer_attention = runner._layer_attention(engine.plugins.attention_per_layer(runner.attention))
    engine.runner.decode_graphs = engine.runner._decode_graphs()
    return engine


@pytest.mark.slow
@pytest.mark.parametrize("graphs", ["off", "on"])
def test_engine_with_the_kernel_gives_the_gather_tokens(graphs):
    rng = random.Random(2)
    reqs = [([rng.randrange(256) for _ in range(rng.randint(1, 40))], rng.randint(2, 8)) for _ in range(5)]
    outs = []
    for decode in (TritonDecode(), GatherDecode()):
        eng = _with_kernel(Engine(EngineConfig(model="tiny", device=DEVICE.type, dtype="float32", attention="sdpa",
                                               decode_graphs=graphs, max_tokens_per_step=64,
                                               prefill_chunk_size=32)), decode)
        ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
        eng.run_until_done()
        outs.append([eng.requests[i].output for i in ids])
        if isinstance(decode, TritonDecode):
            assert "triton decode" in eng.header().label()
        if graphs == "on" and isinstance(decode, TritonDecode):
            assert eng.runner.decode_graphs.replays > 0
            assert {w for _, w in eng.runner.decode_graphs.graphs} == {eng.runner.kv.max_table_width}  # one width
        assert decode.broken is None
    assert outs[0] == outs[1]


def test_a_kernel_that_fails_falls_back_to_the_gather(monkeypatch):
    from engine.attention import paged_decode_triton

    def no_kernel(*a, **k):
        raise RuntimeError("no Triton backend for this device")

    monkeypatch.setattr(paged_decode_triton, "paged_decode_triton", no_kernel)
    q, k, v, tables, lens = random_case(random.Random(3), 4, 2, 16, 8, n=3, max_len=30)
    decode = TritonDecode()
    with pytest.warns(UserWarning, match="Triton decode attention failed"):
        got = decode(q, k, v, tables, lens, 8)
    assert decode.broken == "RuntimeError: no Triton backend for this device"
    torch.testing.assert_close(got, paged_decode_attention(q, k, v, tables, lens, 8))
    assert not decode.reads_tables  # the gather behind it wants tight tables


def test_decode_graphs_take_tight_tables_once_the_kernel_falls_back(monkeypatch):
    """Graphs size tables for the kernel (whole tables: one width). After the kernel fails, the
    gather does the work, and whole tables would make it copy every row's full 4k-token table per
    layer: later buckets must be tight again, and the engine label no longer claims the kernel."""
    from engine.attention import paged_decode_triton

    def no_kernel(*a, **k):
        raise RuntimeError("no Triton backend for this device")

    decode = TritonDecode()
    eng = _with_kernel(Engine(EngineConfig(model="tiny", device=DEVICE.type, dtype="float32", attention="sdpa",
                                           decode_graphs="on", block_size=8)), decode)
    graphs = eng.runner.decode_graphs
    assert graphs.bucket(3, 5) == (4, eng.runner.kv.max_table_width) and "triton decode" in eng.header().label()
    monkeypatch.setattr(paged_decode_triton, "paged_decode_triton", no_kernel)
    eng.add_request([1, 2, 3], max_new_tokens=4)
    with pytest.warns(UserWarning, match="Triton decode attention failed"):
        eng.run_until_done()
    assert graphs.bucket(3, 5) == (4, graphs.width_unit) and graphs.width_unit < eng.runner.kv.max_table_width
    assert "triton decode" not in eng.header().label()


def test_choice_and_bad_settings(monkeypatch):
    cpu = torch.device("cpu")
    assert not isinstance(choose_decode_attention("auto", cpu, torch.float32, 64), TritonDecode)
    assert isinstance(choose_decode_attention("gather", cpu, torch.float32, 64), GatherDecode)
    with pytest.raises(ValueError, match=r"decode_attention='triton' cannot run: it needs CUDA \(device is cpu\)"):
        Engine(EngineConfig(model="tiny", device="cpu", decode_attention="triton"))
    with pytest.raises(ValueError, match="decode_attention='fast' is not allowed"):
        EngineConfig(decode_attention="fast")
    cuda = torch.device("cuda")
    assert "float64" in decode_kernel.triton_problem(cuda, torch.float64, 64)
    assert "head size" in decode_kernel.triton_problem(cuda, torch.float32, 24)
    monkeypatch.setitem(__import__("sys").modules, "triton", None)  # as if not installed
    assert decode_kernel.triton_problem(cuda, torch.float32, 64) == "triton is not installed"


def test_kernel_on_the_small_presets_shapes_with_long_histories():
    """14 query heads over 2 KV heads, 16-token blocks, ~1,000 keys (many loop turns), and q as the
    model hands it over: a non-contiguous slice of the fused q/k/v projection."""
    from engine.attention.paged_decode_triton import paged_decode_triton

    rng = random.Random(7)
    _, k, v, tables, lens = random_case(rng, 14, 2, 64, 16, n=6, max_len=1150, min_len=900)
    qkv = torch.randn(6, 18, 64, device=DEVICE)
    q = qkv[:, :14]
    got = paged_decode_triton(q, k, v, tables, lens, 16)
    want = paged_decode_attention(q.contiguous(), k, v, tables, lens, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the interpreter compiles nothing")
def test_one_compiled_kernel_for_every_table_width():
    """Eager steps hand the kernel tables as wide as the step's longest request, so the stride
    changes from step to step; it must not be specialised on (widths of 1 or a multiple of 16
    would each compile a new variant mid-run)."""
    from engine.attention.paged_decode_triton import _paged_decode_kernel, paged_decode_triton

    rng = random.Random(3)
    q, k, v, tables, lens = random_case(rng, 14, 2, 64, 16, n=3, max_len=16 * 7)
    paged_decode_triton(q, k, v, tables, lens, 16)
    kernel_cache = _paged_decode_kernel.device_caches[torch.cuda.current_device()][0]
    before = len(kernel_cache)
    for width in (1, 16, 32, 48, 64):
        wide = torch.zeros((3, width), dtype=tables.dtype, device=DEVICE)
        wide[:, :min(width, tables.shape[1])] = tables[:, :width]
        short = lens.clamp(max=16 * width)
        got = paged_decode_triton(q, k, v, wide, short, 16)
        torch.testing.assert_close(got, paged_decode_attention(q, k, v, wide, short, 16), rtol=1e-5, atol=1e-5)
    assert len(kernel_cache) == before, f"{len(kernel_cache) - before} more compiled variants for other table widths"


def _nvidia_tools_missing() -> str | None:
    import os

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    missing = [t for t in ("ptxas", "cuobjdump") if not os.path.exists(os.path.join(bin_dir, t))]
    return f"this triton wheel has no {' or '.join(missing)} (needed to compile for a GPU)" if missing else None


@pytest.mark.slow
@pytest.mark.skipif(_nvidia_tools_missing() is not None, reason=str(_nvidia_tools_missing()))
def test_kernel_compiles_for_a100_and_h100_without_spills():
    """The interpreter checks the kernel's arithmetic, not whether it compiles: tl.dot's minimum
    shapes, dtype rules and register pressure only show up in the real compiler. So compile it for
    sm_80 and sm_90, as the engine launches it for each preset, and check that no registers spill to
    local memory and that bf16/fp16 use tensor cores (mma)."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cases = [f"{arch}:{dtype}:{preset}" for arch in (80, 90) for dtype in ("bfloat16", "float16", "float32")
             for preset in ("tiny", "small")]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, os.path.join(root, "tests", "triton_aot.py"), *cases], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(compiled) == len(cases)
    for c in compiled:
        assert c["local_bytes"] == 0, f"registers spill to local memory: {c}"
        if c["dtype"] != "float32":
            assert c["tensor_core_ops"] > 0, f"the dot products do not use tensor cores: {c}"
