"""The CPU's rotary-and-write kernel (cpu_kernels/csrc/rotary_write.cpp, PagedKVStore.rotary_write):
bit for bit the torch ops it stands for, in the model and in the pool, and refused or left out
where it cannot run."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, EngineConfig
from engine.cpu_kernels import build
from engine.kv.paged_store import PagedKVStore
from engine.models.llama import Rotary

problem = build()
pytestmark = pytest.mark.skipif(problem is not None, reason=f"the CPU kernels cannot be built here: {problem}")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (NaN compares equal to the same NaN)."""
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def torch_path(qkv, cos, sin, heads, k_pool, v_pool, slots):
    kv_heads = (qkv.shape[1] - heads) // 2
    qk = Rotary.apply(qkv[:, :heads + kv_heads], cos, sin)
    k_pool.index_copy_(0, slots, qk[:, heads:])
    v_pool.index_copy_(0, slots, qkv[:, heads + kv_heads:])
    return qk[:, :heads]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("rows, heads, kv_heads, d", [(1, 9, 3, 64), (16, 9, 3, 64), (300, 4, 2, 16), (7, 14, 2, 128)])
def test_the_same_bits_as_rotary_then_write(dtype, rows, heads, kv_heads, d):
    gen = torch.Generator().manual_seed(rows + d)
    qkv = (torch.randn(rows, heads + 2 * kv_heads, d, generator=gen) * 4).to(dtype)
    qkv[0, 0, :3] = torch.tensor([float("nan"), float("inf"), 1e30])  # NaN, inf and overflow go through as torch's
    rotary = Rotary(d, 10000.0, 1 << 16)
    rotary.reserve(60000)
    cos, sin = rotary.cos_sin(torch.randint(0, 60000, (rows,), generator=gen), dtype)
    slots = torch.randperm(2 * rows + 3, generator=gen)[:rows]
    pools = [torch.zeros(2 * rows + 3, kv_heads, d, dtype=dtype) for _ in range(4)]
    want = torch_path(qkv, cos, sin, heads, pools[0], pools[1], slots)
    got = torch.ops.cbtui.rotary_write(qkv, cos, sin, heads, pools[2], pools[3], slots)
    assert got.shape == (rows, heads, d) and got.dtype == dtype
    assert torch.equal(bits(got), bits(want))
    assert torch.equal(bits(pools[2]), bits(pools[0])) and torch.equal(bits(pools[3]), bits(pools[1]))


def test_bad_input_is_refused_with_what_is_wrong():
    qkv, cos = torch.randn(2, 8, 16), torch.randn(2, 1, 16)
    pool = torch.zeros(4, 2, 16)
    with pytest.raises(RuntimeError, match="row 1 names slot 4 outside the pool"):
        torch.ops.cbtui.rotary_write(qkv, cos, cos, 4, pool, pool.clone(), torch.tensor([0, 4]))
    with pytest.raises(RuntimeError, match="not queries, keys and values of 3 query heads"):
        torch.ops.cbtui.rotary_write(qkv, cos, cos, 3, pool, pool.clone(), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="cos and sin must be"):
        torch.ops.cbtui.rotary_write(qkv, cos.double(), cos, 4, pool, pool.clone(), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="slots must be int64"):
        torch.ops.cbtui.rotary_write(qkv, cos, cos, 4, pool, pool.clone(), torch.tensor([0, 1]).int())


def logits_of_a_run(config: EngineConfig, fused: bool, monkeypatch) -> list[torch.Tensor]:
    """Every step's logits of a small mixed run (prefill chunks, then decodes)."""
    if not fused:
        monkeypatch.setattr(PagedKVStore, "rotary_write", lambda self, *args: None)
    eng = Engine(config)
    for i in range(4):
        eng.add_request([(5 * i + j) % 256 for j in range(3 + 9 * i)], max_new_tokens=6)
    model, seen = eng.runner.model, []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.clone()))
    eng.run_until_done()
    hook.remove()
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_model_gives_the_same_logits_with_and_without_it(dtype, monkeypatch):
    config = EngineConfig(model="tiny", device="cpu", dtype=dtype, max_tokens_per_step=24, prefill_chunk_size=8,
                          block_size=4)
    used = []
    original = PagedKVStore.rotary_write
    monkeypatch.setattr(PagedKVStore, "rotary_write",
                        lambda self, *args: used.append(1) or original(self, *args))
    fused = logits_of_a_run(config, True, monkeypatch)
    plain = logits_of_a_run(config, False, monkeypatch)
    assert used and len(fused) == len(plain) > 4
    assert all(torch.equal(a, b) for a, b in zip(fused, plain, strict=True))


def test_left_out_where_it_cannot_run():
    store = PagedKVStore(1, 2, 16, torch.float16, torch.device("cpu"), num_blocks=4, block_size=4, max_context=16)
    assert store.rotary_write(0, torch.zeros(1, 8, 16, dtype=torch.float16), None, None, 4) is None  # type: ignore[arg-type]
    store = PagedKVStore(1, 2, 16, torch.float32, torch.device("cpu"), num_blocks=4, block_size=4, max_context=16)
    store.k_pool = object()  # type: ignore[assignment]  # as kv_int8 replaces the pool
    assert store.rotary_write(0, torch.zeros(1, 8, 16), None, None, 4) is None  # type: ignore[arg-type]

    class OwnWrite(PagedKVStore):  # a store that writes only some slots, as a sequence shard does
        def write(self, layer, k, v):
            pass

    store = OwnWrite(1, 2, 16, torch.float32, torch.device("cpu"), num_blocks=4, block_size=4, max_context=16)
    assert store.rotary_write(0, torch.zeros(1, 8, 16), None, None, 4) is None  # type: ignore[arg-type]
