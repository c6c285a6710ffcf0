"""Correctness anchor: our decoder and Hugging Face's LlamaForCausalLM, same weights, same answers.

fp32 on the CPU. The logits of whole prompts agree within 1e-4 (relative to the largest logit)
and greedy generation gives identical tokens, our side under continuous batching.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import our_logits

from engine import Engine, EngineConfig
from engine.models.hf_weights import hf_pieces, to_hf_llama

transformers = pytest.importorskip("transformers")

REL_TOL = 1e-4


@pytest.fixture(scope="module")
def pair():
    engine = Engine(EngineConfig(model="tiny", device="cpu", dtype="float32", attention="sdpa", seed=3))
    return engine, to_hf_llama(engine.runner.model)


def test_every_parameter_is_copied(pair):
    engine, hf = pair
    theirs = dict(hf.named_parameters())
    pieces = [(name, param, piece) for name, param in engine.runner.model.named_parameters()
              for piece in hf_pieces(name, engine.runner.spec)]
    assert sorted(p[2][0] for p in pieces) == sorted(theirs)  # each of theirs exactly once
    for name, param, (their_name, first, rows) in pieces:
        assert torch.equal(theirs[their_name], param if rows < 0 else param[first:first + rows]), name


@pytest.mark.parametrize("length", [1, 7, 64, 300])
def test_logits_match(pair, length):
    engine, hf = pair
    rng = random.Random(length)
    tokens = [rng.randrange(engine.runner.spec.vocab_size) for _ in range(length)]
    ours = our_logits(engine, tokens)
    with torch.no_grad():
        theirs = hf(torch.tensor([tokens])).logits[0]
    assert ours.shape == theirs.shape
    rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert rel < REL_TOL, f"max relative logit difference {rel:.2e}"


def test_logit_check_can_fail(pair):
    """The comparison above is sharp: one perturbed weight breaks it."""
    engine, hf = pair
    tokens = list(range(1, 40))
    ours = our_logits(engine, tokens)
    w = hf.model.layers[0].self_attn.k_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(1.01)
            theirs = hf(torch.tensor([tokens])).logits[0]
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() > REL_TOL


def test_greedy_outputs_identical(pair):
    """Several requests through our continuous batching vs HF generate, one prompt at a time."""
    engine, hf = pair
    rng = random.Random(0)
    prompts = [[rng.randrange(256) for _ in range(rng.randint(3, 60))] for _ in range(5)]
    new = 24
    ours = Engine(EngineConfig(model="tiny", device="cpu", dtype="float32", attention="sdpa", seed=3,
                               max_tokens_per_step=48, prefill_chunk_size=16))
    ids = [ours.add_request(p, max_new_tokens=new) for p in prompts]
    outs = ours.run_until_done()
    for rid, prompt in zip(ids, prompts, strict=True):
        with torch.no_grad():
            gen = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert gen[0, len(prompt):].tolist() == outs[rid], f"request {rid} differs"


@pytest.mark.slow
@pytest.mark.parametrize("workload_name", ["anchor", "varied"])
def test_hf_continuous_batching_row_gives_our_tokens(monkeypatch, workload_name):
    """The bench's generate_batch row end to end at tiny scale. transformers sizes its paged cache
    from free GPU memory and refuses on the CPU, so its memory probe is replaced here; everything
    else is theirs. One output length takes the generate_batch call, several take the manager: both
    must return every request, greedy tokens equal to ours (fp32), timed from request creation."""
    from transformers.generation.continuous_batching.cache import PagedAttentionMemoryHandler

    from cbtui.bench.hf_systems import CB_NAME, generate_batch
    from cbtui.bench.ours import release, run_ours
    from cbtui.bench.workloads import make_workload

    monkeypatch.setattr(PagedAttentionMemoryHandler, "get_available_memory",
                        lambda self, *args, **kwargs: 1 << 30)
    workload = make_workload(workload_name, scale=1 / 64, model="tiny")
    assert len(set(workload.max_new_tokens)) == (1 if workload_name == "anchor" else workload.num_requests)
    ours, engine = run_ours(workload, "fcfs", "cpu", "float32", "sdpa", 512)
    hf = to_hf_llama(engine.runner.model, attn_implementation="sdpa")
    release(engine)
    theirs = generate_batch(hf, workload, {"page_size": 16, "num_blocks": 512, "max_batch_tokens": 512})
    assert theirs.system == CB_NAME and theirs.available
    assert theirs.outputs == ours.outputs
    assert theirs.output_tokens == sum(workload.max_new_tokens)
    assert "warm-up" not in theirs.note  # its request timestamps were usable
    assert ", attention " in theirs.note  # the implementation transformers ran with
    assert len(theirs.ttft_s) == workload.num_requests and theirs.wall_s > 0
