"""The attention backends agree on random ragged batches; the mask follows the rule."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.attention import BACKENDS, available_backends
from engine.batch_builder import build_batch, mask_from_items, ragged_causal_mask
from engine.records import ScheduledItem

items_st = st.lists(st.tuples(st.integers(0, 20), st.integers(1, 12)), min_size=1, max_size=6)


def make_batch(shape):
    items = [ScheduledItem(i, "prefill", first, n, first + n) for i, (first, n) in enumerate(shape)]
    tokens = [[1] * n for _, n in shape]
    return build_batch(items, tokens, [True] * len(items), torch.device("cpu"))


@pytest.mark.slow
@settings(max_examples=40)
@given(items_st, st.sampled_from([(4, 2), (4, 4), (6, 1)]))
def test_backends_agree(shape, heads):
    h, kvh = heads
    batch = make_batch(shape)
    gen = torch.Generator().manual_seed(len(shape))
    q = torch.randn(batch.num_tokens, h, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(batch.num_keys, kvh, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(batch.num_keys, kvh, 8, generator=gen, dtype=torch.float64)
    ref = BACKENDS["reference"](q, k, v, batch)
    for name in available_backends(torch.device("cpu")):
        torch.testing.assert_close(BACKENDS[name](q, k, v, batch), ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=40)
@given(items_st)
def test_mask_rule(shape):
    batch = make_batch(shape)
    mask = ragged_causal_mask(batch)
    assert mask.tolist() == mask_from_items(batch.items)
    for i in range(batch.num_tokens):
        for j in range(batch.num_keys):
            same_seq = bool(batch.seq_ids[i] == batch.key_seq_ids[j])
            expect = same_seq and bool(batch.key_positions[j] <= batch.positions[i])
            assert bool(mask[i, j]) == expect


def test_batch_layout():
    batch = make_batch([(0, 3), (5, 1)])
    assert batch.positions.tolist() == [0, 1, 2, 5]
    assert batch.seq_ids.tolist() == [0, 0, 0, 1]
    assert batch.cu_seqlens_q.tolist() == [0, 3, 4]
    assert batch.cu_seqlens_k.tolist() == [0, 3, 9]
    assert batch.key_positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5]
    assert batch.sample_rows.tolist() == [2, 3]


def test_reference_is_stable_for_huge_scores():
    batch = make_batch([(0, 4)])
    q = torch.full((4, 2, 8), 1e4, dtype=torch.float32)
    k = torch.full((4, 2, 8), 1e4, dtype=torch.float32)
    v = torch.randn(4, 2, 8)
    out = BACKENDS["reference"](q, k, v, batch)
    assert torch.isfinite(out).all()
