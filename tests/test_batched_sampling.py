"""Sampling the whole batch at once (engine/sampling.sample_batch): a seeded request draws the same
tokens alone as in any batch, whatever its neighbours' temperature, top-k and top-p; top-p keeps
the nucleus only; greedy rows stay argmax; and the batch takes one draw per sampled row."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from engine import Engine, EngineConfig
from engine.sampling import probabilities, sample, sample_batch

SETTINGS = [dict(temperature=0.9, seed=11), dict(temperature=1.3, top_k=7, seed=12),
            dict(temperature=0.7, top_p=0.8, seed=13), dict(temperature=1.0, top_k=20, top_p=0.5, seed=14),
            dict()]  # the last is greedy


def run(settings: list[dict]) -> list[list[int]]:
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    ids = [eng.add_request(f"prompt number {i}", max_new_tokens=12, **s) for i, s in enumerate(settings)]
    out = eng.run_until_done()
    return [out[i] for i in ids]


def test_each_request_draws_the_same_tokens_alone_and_in_a_batch():
    together = run(SETTINGS)
    for i, s in enumerate(SETTINGS):
        eng = Engine(EngineConfig(model="tiny", device="cpu"))
        # the same id as in the batch: an unseeded request's seed derives from its id
        rid = eng.add_request(f"prompt number {i}", max_new_tokens=12, request_id=i, **s)
        assert eng.run_until_done()[rid] == together[i], f"request {i} ({s})"


@dataclass
class Row:
    id: int
    temperature: float
    top_k: int = 0
    top_p: float = 1.0


def test_the_batch_equals_each_row_sampled_alone():
    logits = torch.randn(5, 300)
    rows = [Row(0, 0.8), Row(1, 0.0), Row(2, 1.2, top_k=5), Row(3, 0.6, top_p=0.3), Row(4, 1.0, 9, 0.9)]
    gens = {r.id: torch.Generator().manual_seed(100 + r.id) for r in rows}
    batch = sample_batch(logits, rows, gens)
    gens = {r.id: torch.Generator().manual_seed(100 + r.id) for r in rows}
    alone = [sample(logits[i], r.temperature, r.top_k, gens[r.id], r.id, r.top_p) for i, r in enumerate(rows)]
    assert batch == alone
    assert batch[1] == int(torch.argmax(logits[1]))


def test_top_p_keeps_the_smallest_set_that_reaches_it():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = probabilities(logits, 1.0, 0, top_p=0.7)[0]
    assert torch.allclose(p, torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]))
    assert probabilities(logits, 1.0, 0, top_p=0.4)[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    cut = probabilities(logits, 1.0, 3, top_p=0.9)[0]  # top-k 3 first, then the nucleus of what is left
    assert cut[3] == 0 and cut[2] > 0


@pytest.mark.parametrize("top_p", [0.3, 0.9])
def test_draws_stay_inside_the_nucleus(top_p):
    logits = torch.randn(64)
    allowed = probabilities(logits, 1.0, 0, top_p=top_p) > 0
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        assert allowed[sample(logits, 1.0, 0, gen, top_p=top_p)]


def test_a_tiny_top_p_is_greedy_and_a_bad_one_is_refused():
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    greedy = eng.add_request("top p", max_new_tokens=8)
    nucleus = eng.add_request("top p", max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3)
    out = eng.run_until_done()
    assert out[greedy] == out[nucleus]
    for bad in (0, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="top_p="):
            eng.add_request("x", top_p=bad)


def test_one_draw_per_sampled_row():
    """A request's generator moves one number per token: the stream does not depend on the batch."""
    gen = torch.Generator().manual_seed(5)
    sample_batch(torch.randn(3, 50), [Row(0, 1.0), Row(1, 0.0), Row(2, 1.0, top_k=3)],
                 {0: gen, 2: torch.Generator()})
    again = torch.Generator().manual_seed(5)
    torch.rand(1, generator=again)
    assert torch.rand(1, generator=gen).item() == torch.rand(1, generator=again).item()


def nucleus_by_sorting(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The textbook nucleus: sort the whole row, keep tokens until the mass before them reaches top_p."""
    probs = torch.softmax(logits.float(), dim=-1)
    values, order = torch.sort(probs, dim=-1, descending=True)
    inside = torch.cumsum(values, dim=-1) - values < top_p
    keep = torch.zeros_like(inside).scatter_(-1, order, inside)
    kept = probs.masked_fill(~keep, 0)
    return kept / kept.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("spread", [0.01, 1.0, 8.0])  # flat: the nucleus is wider than the candidates
def test_top_p_equals_the_textbook_nucleus_over_a_large_vocabulary(spread):
    logits = torch.randn(3, 5000, generator=torch.Generator().manual_seed(1)) * spread
    ours = probabilities(logits, 1.0, 0, top_p=0.9)
    assert torch.equal(ours > 0, nucleus_by_sorting(logits, 0.9) > 0)
    assert torch.allclose(ours, nucleus_by_sorting(logits, 0.9), atol=1e-6)


def test_greedy_batch_breaks_ties_as_argmax_does():
    """greedy_batch takes max(dim).indices for speed: the first largest, as argmax, ties included."""
    from engine.sampling import greedy_batch

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        logits = (torch.randn(64, 3000, generator=gen) * 2).round().to(dtype)  # many ties per row
        logits[3] = 1.0  # a row of one value: index 0
        assert greedy_batch(logits) == torch.argmax(logits, dim=-1).tolist()
        assert greedy_batch(logits)[3] == 0
