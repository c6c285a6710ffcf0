"""The embedded model's weights: seeded, the same however the module is built."""

from __future__ import annotations

import pytest
import torch

from engine.models.llama import PRESETS, DecoderModel, build_model

CPU = torch.device("cpu")


def test_built_without_default_init_the_weights_are_the_seeded_ones():
    """build_model skips nn.Linear's own random init (it constructs on the meta device); every
    parameter must still be set by init_random, to exactly what a normally built module gets."""
    built = build_model("tiny", 3, CPU, torch.float32)
    plain = DecoderModel(PRESETS["tiny"])
    plain.init_random(3)
    got, want = built.state_dict(), plain.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert not torch.equal(build_model("tiny", 4, CPU, torch.float32).lm_head.weight, built.lm_head.weight)


def test_a_model_built_again_for_a_gpu_reuses_its_draws(monkeypatch):
    """Kept draws give the same weights without drawing again, and a built model is a copy: changing
    it changes neither the draws nor the next model. (The CPU stands in for a GPU here.)"""
    plain = DecoderModel(PRESETS["tiny"])
    plain.init_random(5)
    first = build_model("tiny", 5, CPU, torch.float32, keep_draws=True)
    with torch.no_grad():
        first.lm_head.weight.fill_(0.0)
    drawn = []
    real_init = DecoderModel.init_random
    monkeypatch.setattr(DecoderModel, "init_random", lambda self, seed: drawn.append(seed) or real_init(self, seed))
    again = build_model("tiny", 5, CPU, torch.float32)
    assert drawn == []  # taken from the kept draws
    for name, value in plain.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    build_model("tiny", 6, CPU, torch.float32)
    assert drawn == [6]  # another seed is drawn (and the kept draws of seed 5 are dropped)
    build_model("tiny", 5, CPU, torch.float32)
    assert drawn == [6, 5]  # a CPU model keeps no draws by default


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rotary_equals_the_rotate_half_formula_bit_for_bit(dtype):
    """The signed-sin table is only a cheaper way to write Llama's rotation: q*cos + rotate_half(q)*sin."""
    from engine.models.llama import Rotary

    rotary = Rotary(64, 10000.0, 4096)
    positions = torch.tensor([0, 1, 7, 100, 4095])
    x = torch.randn(5, 3, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    cos, signed_sin = rotary.cos_sin(positions, dtype)
    freqs = positions.double()[:, None] * rotary._inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    ref_cos, ref_sin = emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]
    rotate_half = torch.cat([-x[..., 32:], x[..., :32]], dim=-1)
    assert torch.equal(Rotary.apply(x, cos, signed_sin), x * ref_cos + rotate_half * ref_sin)
