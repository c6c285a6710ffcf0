"""The embedded model's weights: seeded, the same however the module is built."""

from __future__ import annotations

import torch

from engine.model import PRESETS, DecoderModel, build_model

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
