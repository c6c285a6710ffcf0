"""The CPU's greedy kernel (cpu_kernels/csrc/greedy.cpp): the tokens torch's max(dim=-1).indices picks,
ties, NaN and -inf rows included, and greedy_batch taking it on the CPU."""

from __future__ import annotations

import pytest
import torch

from engine import sampling
from engine.cpu_kernels import build

problem = build()
pytestmark = pytest.mark.skipif(problem is not None, reason=f"the CPU kernels cannot be built here: {problem}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, vocab", [(1, 1), (3, 63), (16, 49152), (64, 1000), (5, 130)])
def test_the_tokens_torch_picks(dtype, rows, vocab):
    gen = torch.Generator().manual_seed(rows * vocab)
    logits = torch.randn(rows, vocab, generator=gen).to(dtype)
    if vocab > 100:
        logits[0, 7] = logits[0, 90] = 50  # a tie: the first
        logits[-1, :] = 1.0  # all tied
        logits[min(1, rows - 1), 70] = float("nan")  # NaN wins, the first of them
        logits[min(1, rows - 1), 99] = float("nan")
    if rows > 2:
        logits[2, :] = float("-inf")
    want = logits.max(dim=-1).indices
    assert torch.equal(torch.ops.cbtui.greedy(logits), want)
    if vocab > 1:  # rows apart by more than their length
        assert torch.equal(torch.ops.cbtui.greedy(logits[:, 1:]), logits[:, 1:].max(dim=-1).indices)


def test_greedy_batch_takes_it_on_the_cpu(monkeypatch):
    logits = torch.randn(4, 300).bfloat16()
    calls = []
    monkeypatch.setattr(torch.ops.cbtui, "greedy", lambda x: calls.append(x) or x.max(dim=-1).indices, raising=False)
    assert sampling.greedy_batch(logits) == logits.max(dim=-1).indices.tolist() and len(calls) == 1
    assert sampling.greedy_batch(logits.double()) == logits.double().max(dim=-1).indices.tolist()
    assert len(calls) == 1  # float64: torch's own


def test_bad_input_is_refused():
    with pytest.raises(RuntimeError, match="float32 or bfloat16 logits"):
        torch.ops.cbtui.greedy(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"\[rows, vocab\] with contiguous rows"):
        torch.ops.cbtui.greedy(torch.zeros(3, 2).t())
