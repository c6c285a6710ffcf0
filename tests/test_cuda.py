"""CUDA checks: exactness on the GPU with every backend, flex vs sdpa, and the bf16 anchor runs.

Every test here skips cleanly, with the reason, on a machine without an NVIDIA GPU.
scripts/gpu_check.sh runs them (`pytest -m cuda`).
"""

from __future__ import annotations

import random

import pytest
import torch

from engine import Engine, EngineConfig
from engine.attention import available_backends, get_backend
from engine.attention.reference import reference_attention
from engine.batch_builder import build_batch
from engine.records import ScheduledItem

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA not available)")]

CUDA = torch.device("cuda")


def _backends():
    return available_backends(CUDA) if torch.cuda.is_available() else ["reference", "sdpa", "flex"]


@pytest.mark.parametrize("backend", _backends())
def test_continuous_equals_alone_fp32(backend):
    """float32 on the GPU: greedy outputs under continuous batching (decode batching, mixed steps,
    preemption) equal each request run alone."""
    rng = random.Random(11)
    reqs = [([rng.randrange(256) for _ in range(rng.randint(1, 300))], rng.randint(1, 20)) for _ in range(10)]
    cfg = dict(model="tiny", device="cuda", dtype="float32", attention=backend, kv_layout="paged", block_size=16)
    eng = Engine(EngineConfig(max_tokens_per_step=256, prefill_chunk_size=96, num_blocks=64, **cfg))
    ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
    preempted = 0
    while eng.has_unfinished():
        preempted += len(eng.step().preempted)
    alone = Engine(EngineConfig(max_tokens_per_step=1024, prefill_chunk_size=1024, **cfg))
    for rid, (p, n) in zip(ids, reqs, strict=True):
        one = alone.add_request(p, max_new_tokens=n)
        alone.run_until_done()
        assert alone.requests[one].output == eng.requests[rid].output, f"request {rid} differs ({backend})"
    assert preempted > 0, "the pool was meant to be small enough to preempt"


@pytest.mark.parametrize("seed", range(4))
def test_flex_and_sdpa_agree(seed):
    """Random ragged batches spanning many 128-blocks, decodes in front as the engine packs them."""
    if "flex" not in _backends():
        pytest.skip("flex attention is not available in this torch")
    rng = random.Random(seed)
    items, toks = [], []
    for s in range(rng.randint(2, 40)):
        first = rng.randint(0, 900)
        n = 1 if s < 10 and rng.random() < 0.7 else rng.randint(1, 400)
        items.append(ScheduledItem(s, "decode" if n == 1 else "prefill", first, n, first + n))
        toks.append([0] * n)
    items.sort(key=lambda i: i.num_tokens != 1)  # tokens are all zeros: only the counts must follow
    items = [ScheduledItem(j, i.kind, i.first_pos, i.num_tokens, i.key_len) for j, i in enumerate(items)]
    toks = [[0] * i.num_tokens for i in items]
    batch = build_batch(items, toks, [True] * len(items), CUDA)
    gen = torch.Generator(device=CUDA).manual_seed(seed)
    # the `small` preset's heads (14 query, 2 KV, dim 64), float32
    q = torch.randn(batch.num_tokens, 14, 64, device=CUDA, generator=gen)
    k = torch.randn(batch.num_keys, 2, 64, device=CUDA, generator=gen)
    v = torch.randn(batch.num_keys, 2, 64, device=CUDA, generator=gen)
    flex = get_backend("flex")(q, k, v, batch)
    sdpa = get_backend("sdpa")(q, k, v, batch)
    torch.testing.assert_close(flex, sdpa, rtol=2e-4, atol=2e-4)
    from engine.attention.flex import _broken
    small_heads = [key for key in _broken if key[2:] == (14, 2, 64)]
    assert not small_heads, f"compiled flex fell back for the small preset's heads: {_broken}"
    if batch.num_tokens * batch.num_keys < 4e7:
        torch.testing.assert_close(flex, reference_attention(q, k, v, batch), rtol=2e-4, atol=2e-4)


def test_anchor_bf16_runs():
    """A slice of the anchor workload on the `small` preset in bf16: every request gets its 128
    tokens, continuous batching takes fewer steps than static, and it is the flex backend."""
    from cbtui.bench.ours import release, run_ours
    from cbtui.bench.workloads import make_workload

    workload = make_workload("anchor", scale=32 / 512, model="small")
    cont, engine = run_ours(workload, "fcfs", "cuda", "bfloat16", "auto", 8192)
    assert engine.runner.attention_name == "flex" and engine.runner.dtype == torch.bfloat16
    release(engine)
    del engine
    static, engine = run_ours(workload, "static", "cuda", "bfloat16", "auto", 8192)
    release(engine)
    del engine
    assert [len(o) for o in cont.outputs] == [128] * workload.num_requests
    assert [len(o) for o in static.outputs] == [128] * workload.num_requests
    assert cont.steps < static.steps
    assert cont.output_tok_s > 0 and static.output_tok_s > 0
    same = sum(a == b for a, b in zip(cont.outputs, static.outputs, strict=True)) / workload.num_requests
    print(f"anchor slice: continuous {cont.output_tok_s:,.0f} out tok/s in {cont.steps} steps; static "
          f"{static.output_tok_s:,.0f} in {static.steps}; identical outputs {same:.0%} (bf16)")


def test_decode_attention_avoids_cudnn():
    """The batched decode path must not land on cuDNN attention, whose per-shape planning cost
    ~2.9 ms of host time per call on an H200 (70 of 112 ms of a 256-request decode step)."""
    from torch.profiler import ProfilerActivity, profile

    items = [ScheduledItem(i, "decode", 100 + 37 * i, 1, 101 + 37 * i) for i in range(64)]
    batch = build_batch(items, [[0]] * 64, [True] * 64, CUDA)
    q = torch.randn(64, 14, 64, device=CUDA, dtype=torch.bfloat16)
    k = torch.randn(batch.num_keys, 2, 64, device=CUDA, dtype=torch.bfloat16)
    from engine.attention.paged_decode import paged_decode_attention

    pool = torch.randn(64 * 64, 2, 64, device=CUDA, dtype=torch.bfloat16)
    tables = torch.randperm(64 * 4, device=CUDA)[:64 * 3].view(64, 3)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        get_backend("flex")(q, k, k, batch)
        paged_decode_attention(q, pool, pool, tables, batch.key_lens.clamp(max=48), 16)
        torch.cuda.synchronize()
    names = [e.key.lower() for e in prof.key_averages()]
    assert not [n for n in names if "cudnn" in n], names


def test_decode_graphs_replay_what_eager_decodes_compute():
    """float64, tiny: captured decode graphs give the tokens eager decodes give, through preemption,
    and really are replayed (not just run eagerly on the padded buffers). float64 so that padding
    (another GEMM shape, a longer masked key row) cannot flip a near-tie."""
    rng = random.Random(3)
    reqs = [([rng.randrange(256) for _ in range(rng.randint(1, 200))], rng.randint(1, 30)) for _ in range(12)]
    outs = {}
    for mode in ("on", "off"):
        eng = Engine(EngineConfig(model="tiny", device="cuda", dtype="float64", attention="sdpa", decode_graphs=mode,
                                  max_tokens_per_step=256, prefill_chunk_size=96, num_blocks=64, block_size=16))
        ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
        eng.run_until_done()
        outs[mode] = [eng.requests[i].output for i in ids]
        if mode == "on":
            graphs = eng.runner.decode_graphs
            assert graphs.replays > 5 and graphs.graphs and all(g is not None for g, _ in graphs.graphs.values())
    assert outs["on"] == outs["off"]


def test_decode_graphs_small_bf16_capture_and_agree():
    """The bench's shape (small, bf16, flex): capture buckets up front, then decode with them; the
    greedy tokens match eager decodes (bf16: allow a rare near-tie flip)."""
    import time

    rng = random.Random(4)
    reqs = [([rng.randrange(32000) for _ in range(rng.randint(20, 280))], 12) for _ in range(13)]
    outs = {}
    for mode in ("on", "off"):
        eng = Engine(EngineConfig(model="small", device="cuda", dtype="bfloat16", attention="flex",
                                  decode_graphs=mode, max_tokens_per_step=4096, prefill_chunk_size=1024,
                                  num_blocks=512))
        if mode == "on":
            start = time.perf_counter()
            built = eng.runner.decode_graphs.capture_up_to(16, 300)
            print(f"{built} small-preset decode graphs captured in {time.perf_counter() - start:.2f} s")
            assert eng.runner.decode_attention.reads_tables, "the Triton decode kernel should be chosen on CUDA"
            assert built == 5  # batches 1..16; the kernel takes whole tables, so one width
        ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
        eng.run_until_done()
        outs[mode] = [eng.requests[i].output for i in ids]
        if mode == "on":
            assert eng.runner.decode_graphs.replays >= 10 and eng.runner.decode_graphs.broken is None
        assert eng.runner.decode_attention.broken is None, eng.runner.decode_attention.broken
    same = sum(a == b for a, b in zip(outs["on"], outs["off"], strict=True))
    assert same >= len(reqs) - 1, f"only {same} of {len(reqs)} requests agree"


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_triton_decode_kernel_matches_the_gather(dtype, tol):
    """Compiled on the GPU (the CPU tests run it interpreted): the small preset's heads, shuffled
    block tables, lengths across several loop turns."""
    from engine.attention.paged_decode import paged_decode_attention
    from engine.attention.paged_decode_triton import paged_decode_triton

    rng = random.Random(5)
    bs, n, num_blocks = 16, 37, 37 * 80
    lens = [rng.randint(1, 1200) for _ in range(n)]
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-length // bs))] for length in lens]
    width = max(map(len, tables))
    tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], device=CUDA)
    gen = torch.Generator(device=CUDA).manual_seed(5)
    k = torch.randn(num_blocks * bs, 2, 64, device=CUDA, generator=gen).to(dtype)
    v = torch.randn(num_blocks * bs, 2, 64, device=CUDA, generator=gen).to(dtype)
    q = torch.randn(n, 14, 64, device=CUDA, generator=gen).to(dtype)
    lens = torch.tensor(lens, device=CUDA)
    got = paged_decode_triton(q, k, v, tables, lens, bs)
    want = paged_decode_attention(q.float(), k.float(), v.float(), tables, lens, bs).to(dtype)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_nvml_probe_reads_this_gpu():
    """The dashboard's memory panel through the real NVML (elsewhere only a fake pynvml runs): the
    card torch sees, its total, and used memory that grows when we allocate 1 GiB."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    from engine.profiling.gpu_memory import NvmlProbe

    probe = NvmlProbe()
    try:
        index = torch.cuda.current_device()
        before = probe.read().gpus[index]
        _, total = torch.cuda.mem_get_info(index)
        # NVML counts the whole framebuffer; CUDA's total can leave out what the driver reserves.
        assert abs(before.total_bytes - total) <= 0.05 * total, (before, total)
        name = torch.cuda.get_device_name(index)
        assert name in before.name or before.name in name, (before.name, name)
        block = torch.empty(1 << 30, dtype=torch.uint8, device=CUDA)
        torch.cuda.synchronize()
        after = probe.read().gpus[index]
        assert after.used_bytes - before.used_bytes >= (1 << 30) * 0.9, (before, after)
        del block
    finally:
        probe.close()


def test_allocator_bytes_match_torchs_own_figures():
    from engine.profiling.memory import cuda_allocator_bytes

    block = torch.empty(3 << 20, dtype=torch.uint8, device=CUDA)
    assert cuda_allocator_bytes(CUDA) == (torch.cuda.memory_allocated(CUDA), torch.cuda.memory_reserved(CUDA))
    del block


def test_device_timer_measures_each_forward_pass():
    """CUDA events around every forward pass: a positive span per kind of step, never longer than
    the host's time for the same steps (the span sits inside the step)."""
    eng = Engine(EngineConfig(model="small", device="cuda", dtype="bfloat16", max_tokens_per_step=512,
                              prefill_chunk_size=256, num_blocks=256))
    for n in (300, 40, 90):
        eng.add_request(list(range(n)), max_new_tokens=6)
    eng.run_until_done()
    for kind, (host_s, steps, device_s) in eng.time_by_kind.items():
        assert steps > 0 and 0 < device_s < host_s, (kind, host_s, steps, device_s)


def test_overlapped_steps_never_wait_on_the_gpu_inside_a_step():
    """With overlap_steps, nothing inside a step synchronises with the GPU (torch's sync debug mode
    turns any implicit sync into an error): no pageable copy, no .item(), no .tolist(). The one
    wait is on the event of the previous step's token copy. Tokens equal synchronous steps'
    (same batches, same kernels: equal even in bf16)."""
    rng = random.Random(9)
    reqs = [([rng.randrange(32000) for _ in range(rng.randint(20, 400))], rng.randint(4, 16)) for _ in range(12)]
    outs = {}
    for overlap in (False, True):
        eng = Engine(EngineConfig(model="small", device="cuda", dtype="bfloat16", max_tokens_per_step=1024,
                                  prefill_chunk_size=256, num_blocks=1024, overlap_steps=overlap))
        eng.runner.decode_graphs.capture_up_to(16, 512)
        warm = eng.add_request([1, 2, 3] * 40, max_new_tokens=4)  # compiles flex and the decode kernel
        eng.run_until_done()
        ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
        torch.cuda.synchronize()
        if overlap:
            torch.cuda.set_sync_debug_mode("error")
        try:
            eng.run_until_done()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        outs[overlap] = [eng.requests[i].output for i in ids]
        assert eng.requests[warm].output and eng.runner.decode_graphs.replays > 0
    assert outs[True] == outs[False]
