"""The embedded model's weights: seeded, the same however the module is built."""

from __future__ import annotations

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
