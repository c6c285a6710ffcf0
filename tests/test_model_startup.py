"""Building the tiny model skips the meta-device detour (its first use imports torch._dynamo), with
the same weights, bit for bit, as the detour gives."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine.models.llama import DIRECT_BUILD_MAX_PARAMS, PRESETS, DecoderModel, build_model, parameter_count


def built_the_old_way(name: str, seed: int) -> DecoderModel:
    with torch.device("meta"):
        model = DecoderModel(PRESETS[name])
    model = model.to_empty(device=torch.device("cpu"))
    model.init_random(seed)
    return model.eval()


@pytest.mark.parametrize("seed", [0, 7])
def test_tiny_weights_equal_those_built_on_the_meta_device(seed):
    new = build_model("tiny", seed, torch.device("cpu"), torch.float32).state_dict()
    old = built_the_old_way("tiny", seed).state_dict()
    assert new.keys() == old.keys()
    for key in new:
        assert torch.equal(new[key], old[key]), key


def test_the_direct_build_leaves_the_global_generator_as_it_was():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    build_model("tiny", 0, torch.device("cpu"), torch.float32)
    assert torch.equal(torch.get_rng_state(), state)


def test_parameter_count_matches_the_modules_and_only_tiny_is_built_directly():
    for spec in PRESETS.values():
        with torch.device("meta"):
            model = DecoderModel(spec)
        assert parameter_count(spec) == sum(p.numel() for p in model.parameters())
    assert parameter_count(PRESETS["tiny"]) <= DIRECT_BUILD_MAX_PARAMS < parameter_count(PRESETS["small"])


def test_building_tiny_does_not_import_dynamo():
    code = ("import sys, torch\nfrom engine.models.llama import build_model\n"
            "build_model('tiny', 0, torch.device('cpu'), torch.float32)\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
