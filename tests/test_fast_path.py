"""The attention fast path on the CPU: batched single-query attention and the flex block mask
built from batch metadata. Exact against the reference backend and run-alone outputs."""

from __future__ import annotations

import random

import pytest
import torch

from engine import Engine, EngineConfig
from engine.attention import available_backends
from engine.attention.flex import BLOCK, kv_block_ranges
from engine.attention.reference import reference_attention
from engine.attention.sdpa import sdpa_attention
from engine.batch_builder import build_batch, ragged_causal_mask
from engine.records import ScheduledItem

CPU = torch.device("cpu")
BACKENDS = [b for b in available_backends(CPU) if b != "reference"]


def random_batch(rng: random.Random, max_items: int, max_first: int, max_len: int, single_share: float):
    items, toks = [], []
    for s in range(rng.randint(1, max_items)):
        first = rng.randint(0, max_first)
        n = 1 if rng.random() < single_share else rng.randint(1, max_len)
        items.append(ScheduledItem(s, "decode" if n == 1 else "prefill", first, n, first + n))
        toks.append([0] * n)
    if rng.random() < 0.5:  # the engine puts decodes first; backends must not rely on it
        order = sorted(range(len(items)), key=lambda i: items[i].num_tokens != 1)
        items = [ScheduledItem(j, *[getattr(items[i], f) for f in ("kind", "first_pos", "num_tokens", "key_len")])
                 for j, i in enumerate(order)]
        toks = [toks[i] for i in order]
    return build_batch(items, toks, [True] * len(items), CPU)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(6))
def test_backends_match_reference(backend, seed):
    from engine.attention import get_backend

    rng = random.Random(seed)
    big = seed % 2 == 1  # spans many 128-blocks of queries and keys
    batch = random_batch(rng, 9, 400 if big else 40, 300 if big else 30, 0.4)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch.num_tokens, 4, 16, dtype=torch.float64, generator=gen)
    k = torch.randn(batch.num_keys, 2, 16, dtype=torch.float64, generator=gen)
    v = torch.randn(batch.num_keys, 2, 16, dtype=torch.float64, generator=gen)
    expected = reference_attention(q, k, v, batch)
    got = get_backend(backend)(q, k, v, batch)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(20))
def test_block_ranges_cover_the_mask_tightly(seed):
    """Every (query block, key block) pair with a visible key is inside the range; the range
    has no block to its left or right that the block's rows could not see."""
    rng = random.Random(seed)
    batch = random_batch(rng, 12, 500, 400, 0.0)
    dense = ragged_causal_mask(batch)
    t, kn = dense.shape
    nkb = -(-kn // BLOCK)
    lo, count = kv_block_ranges(batch.seq_ids, batch.positions, batch.cu_seqlens_k, nkb)
    for qb in range(-(-t // BLOCK)):
        rows = dense[qb * BLOCK:(qb + 1) * BLOCK]
        seen = [kb for kb in range(nkb) if rows[:, kb * BLOCK:(kb + 1) * BLOCK].any()]
        first, n = int(lo[qb]), int(count[qb])
        assert seen, "every query sees at least its own key"
        assert first <= seen[0] and seen[-1] < first + n
        assert first == seen[0] and first + n - 1 == seen[-1]


def test_sdpa_never_expands_kv_heads(monkeypatch):
    """Grouped-query attention without repeat_interleave copies of K/V."""
    def boom(*a, **k):
        raise AssertionError("repeat_interleave called")

    rng = random.Random(1)
    batch = random_batch(rng, 6, 50, 40, 0.5)
    q = torch.randn(batch.num_tokens, 4, 8)
    k = torch.randn(batch.num_keys, 2, 8)
    monkeypatch.setattr(torch.Tensor, "repeat_interleave", boom)
    sdpa_attention(q, k, k.clone(), batch)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_continuous_equals_alone(backend):
    """Greedy outputs under continuous batching (decodes batched, mixed steps, preemption) equal
    each request run alone, float64."""
    rng = random.Random(7)
    reqs = [([rng.randrange(256) for _ in range(rng.randint(1, 90))], rng.randint(1, 14)) for _ in range(7)]
    cfg = dict(model="tiny", device="cpu", dtype="float64", attention=backend, kv_layout="paged", block_size=8)
    eng = Engine(EngineConfig(max_tokens_per_step=40, prefill_chunk_size=24, num_blocks=30, **cfg))
    ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
    outs = eng.run_until_done()
    alone = Engine(EngineConfig(max_tokens_per_step=512, prefill_chunk_size=512, **cfg))
    for rid, (p, n) in zip(ids, reqs, strict=True):  # one at a time: nothing else is in flight
        one = alone.add_request(p, max_new_tokens=n)
        alone.run_until_done()
        assert alone.requests[one].output == outs[rid], f"request {rid} differs under batching"


def test_flex_never_builds_a_dense_block_mask(monkeypatch):
    """The block mask comes from metadata (from_kv_blocks), once per step: create_block_mask,
    which evaluates the mask over T x K, is never called."""
    import torch.nn.attention.flex_attention as fa

    if "flex" not in BACKENDS:
        pytest.skip("flex attention is not available in this torch")

    def boom(*a, **k):
        raise AssertionError("create_block_mask called")

    monkeypatch.setattr(fa, "create_block_mask", boom)
    calls = []
    real = fa.BlockMask.from_kv_blocks
    monkeypatch.setattr(fa.BlockMask, "from_kv_blocks", classmethod(
        lambda cls, *a, **k: calls.append(1) or real(*a, **k)))
    eng = Engine(EngineConfig(model="tiny", device="cpu", attention="flex", max_tokens_per_step=64,
                              prefill_chunk_size=32))
    eng.add_request(list(range(1, 70)), max_new_tokens=2)
    eng.step()  # one prefill step, two layers
    assert len(calls) == 1


def test_flex_falls_back_when_the_compiled_kernel_cannot_be_built(monkeypatch):
    """A head size with no compiled kernel (seen on CUDA for the tiny preset) runs flex
    uncompiled, with a warning, instead of failing the step; the answer is the same."""
    from engine.attention import flex

    if "flex" not in BACKENDS:
        pytest.skip("flex attention is not available in this torch")

    def no_kernel(*a, **k):
        raise RuntimeError("NoValidChoicesError: no choices")

    monkeypatch.setattr(flex, "_flex", lambda device: no_kernel)
    monkeypatch.setattr(flex, "_broken", {})
    batch = random_batch(random.Random(3), 5, 60, 50, 0.3)
    q = torch.randn(batch.num_tokens, 4, 16, dtype=torch.float64)
    k = torch.randn(batch.num_keys, 2, 16, dtype=torch.float64)
    v = torch.randn(batch.num_keys, 2, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match="running it uncompiled"):
        got = flex.flex_attention_ragged(q, k, v, batch)
    torch.testing.assert_close(got, reference_attention(q, k, v, batch), rtol=1e-10, atol=1e-10)
    assert len(flex._broken) == 1


def test_padded_keys_gather_and_slice_agree():
    """Both ways of padding decode keys (one gather on CUDA, slices on the CPU) hold the same
    keys in the same places; only the masked padding may differ."""
    from engine.attention.single import _gather_index, _padded, single_items

    batch = random_batch(random.Random(5), 10, 80, 1, 1.0)
    items = single_items(batch)
    k = torch.randn(batch.num_keys, 2, 8)
    _, index, valid = _gather_index(batch, items, CPU)
    a = _padded(k, batch, items, index, gather=True)
    b = _padded(k, batch, items, index, gather=False)
    assert a.shape == b.shape
    mask = valid[:, None, :, None].expand_as(a)
    assert torch.equal(a[mask], b[mask])


def _prefill_batch(items: list[tuple[int, int]]):
    """A batch of (first position, tokens) items; one token is a decode."""
    scheduled = [ScheduledItem(i, "decode" if n == 1 else "prefill", first, n, first + n)
                 for i, (first, n) in enumerate(items)]
    return build_batch(scheduled, [[0] * n for _, n in items], [True] * len(items), CPU)


@pytest.mark.slow
def test_compiled_flex_compiles_once_for_every_batch_shape(monkeypatch):
    """The compiled kernel sees padded sizes, so batches of one block, or with as many queries as
    keys, reuse the one graph instead of recompiling mid-run (seconds each on CUDA). Dynamo's
    guards do not depend on the device, so a CPU compile (no codegen) counts them.

    The first batch has two query blocks, as many as the KV heads, which duck sizing would tie
    together, and needs no padding at all (the kernel would be traced on views)."""
    from torch._dynamo.testing import CompileCounter

    from engine.attention import flex

    if "flex" not in BACKENDS:
        pytest.skip("flex attention is not available in this torch")
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = flex.compiled_flex(backend=counter)
    monkeypatch.setattr(flex, "_flex", lambda device: compiled)
    rng = random.Random(11)
    fixed = [[(128, 256)],  # 256 rows (2 query blocks) and 384 keys: nothing to pad
             [(0, 120)], [(0, 300)], [(1, 1), (0, 200), (40, 1)], [(0, 1700)]]
    batches = [_prefill_batch(items) for items in fixed]
    # small (one block, queries == keys: prefill from scratch) and large batches, mixed with decodes
    batches += [random_batch(rng, 6, rng.choice([0, 3, 300]), rng.choice([4, 40, 200]), 0.3) for _ in range(14)]
    shapes = set()
    try:
        for batch in batches:
            q = torch.randn(batch.num_tokens, 8, 16, dtype=torch.float64)[:, :4]  # as the fused qkv projection
            k = torch.randn(batch.num_keys, 2, 16, dtype=torch.float64)
            v = torch.randn(batch.num_keys, 2, 16, dtype=torch.float64)
            got = flex.flex_attention_ragged(q, k, v, batch)
            torch.testing.assert_close(got, reference_attention(q, k, v, batch), rtol=1e-10, atol=1e-10)
            n = flex.leading_singles(batch)
            if n < len(batch.q_lens):
                shapes.add((batch.num_tokens - sum(batch.q_lens[:n]) <= BLOCK,
                            batch.num_tokens == batch.num_keys))
    finally:
        torch._dynamo.reset()
    assert {True, False} <= {small for small, _ in shapes} and any(equal for _, equal in shapes)
    assert flex.padded_sizes(256, 384) == (256, 384)  # the no-padding batch above
    assert counter.frame_count == 1, f"flex compiled {counter.frame_count} times for {len(batches)} batches"
    assert not flex._broken


def test_where_compiled_flex_fails_on_cuda_prefill_rows_go_through_sdpa(monkeypatch):
    """On CUDA a failed compile must not leave uncompiled flex (every score materialised) on the
    hot path: the prefill rows go through sdpa, and later steps skip the block mask altogether.
    The CPU stands in for CUDA here."""
    from engine.attention import flex

    if "flex" not in BACKENDS:
        pytest.skip("flex attention is not available in this torch")

    def no_kernel(*a, **k):
        raise RuntimeError("NoValidChoicesError: no choices")

    def uncompiled(*a, **k):
        raise AssertionError("uncompiled flex ran on a device that falls back to sdpa")

    monkeypatch.setattr(flex, "_flex", lambda device: no_kernel)
    monkeypatch.setattr(flex, "_broken", {})
    monkeypatch.setattr(flex, "SDPA_FALLBACK_DEVICES", ("cpu",))
    monkeypatch.setattr("torch.nn.attention.flex_attention.flex_attention", uncompiled)
    rng = random.Random(8)
    for trial in range(3):
        batch = random_batch(rng, 6, 60, 50, 0.4)
        while flex.leading_singles(batch) == len(batch.q_lens):  # needs prefill rows
            batch = random_batch(rng, 6, 60, 50, 0.4)
        q = torch.randn(batch.num_tokens, 4, 16, dtype=torch.float64)
        k = torch.randn(batch.num_keys, 2, 16, dtype=torch.float64)
        v = torch.randn(batch.num_keys, 2, 16, dtype=torch.float64)
        if trial == 0:
            with pytest.warns(UserWarning, match="sdpa instead"):
                got = flex.flex_attention_ragged(q, k, v, batch)
        else:
            got = flex.flex_attention_ragged(q, k, v, batch)
            assert "flex_mask" not in batch.scratch  # known broken: no block mask built
        torch.testing.assert_close(got, reference_attention(q, k, v, batch), rtol=1e-10, atol=1e-10)
    assert len(flex._broken) == 1


def test_decode_only_batches_are_built_on_the_host_with_the_same_indices():
    """The all-decodes shortcut of build_batch (one host copy) gives exactly the tensors the
    general path expands on the device."""
    rng = random.Random(12)
    n = 37
    items = [ScheduledItem(rng.randrange(1000), "decode", p, 1, p + 1) for p in (rng.randint(0, 900) for _ in range(n))]
    tokens = [[rng.randrange(256)] for _ in range(n)]
    fast = build_batch(items, tokens, [True] * n, CPU)
    general = build_batch(items, tokens, [True] * (n - 1) + [False], CPU)  # not all sampling: general path
    for name in ("token_ids", "positions", "seq_ids", "cu_seqlens_q", "key_lens", "cu_seqlens_k"):
        assert torch.equal(getattr(fast, name), getattr(general, name)), name
    assert torch.equal(fast.sample_rows, torch.arange(n))
    assert (fast.q_lens, fast.k_lens, fast.first_positions) == (general.q_lens, general.k_lens, general.first_positions)
    assert torch.equal(fast.key_seq_ids, general.key_seq_ids) and torch.equal(fast.key_positions, general.key_positions)


@pytest.mark.parametrize("items", [[(4, 1), (0, 7), (9, 3)], [(4, 1), (8, 1)], [(4, 1), (8, 1), (2, 1)],
                                   [(0, 5)], [(3, 1), (0, 5)]])
def test_key_lengths_start_16_byte_aligned(items):
    """The Triton decode kernel reads the decodes' key lengths (batch.key_lens[:n]); Triton compiles
    one variant per pointer alignment, so an odd item count must not shift them off 16 bytes (a
    compile mid-run). Allocations are aligned: the offset into them is what counts."""
    batch = _prefill_batch(items)
    assert batch.key_lens.storage_offset() * batch.key_lens.element_size() % 16 == 0
    assert batch.key_lens.tolist() == [first + n for first, n in items]
