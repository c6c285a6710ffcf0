"""bf16 linear layers packed for oneDNN on the CPU (engine/runner/packed_linear.py): same numbers, bit for bit."""

import pytest
import torch
from torch import nn

from engine import Engine, EngineConfig
from engine.runner.packed_linear import pack_linear_weights, packing_problem

CPU = torch.device("cpu")
PROBLEM = packing_problem(CPU, torch.bfloat16)
needs_packing = pytest.mark.skipif(PROBLEM is not None, reason=f"cannot pack here: {PROBLEM}")


def _packed_forward(module: nn.Linear) -> bool:
    return "forward" in module.__dict__


@needs_packing
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_plain_linear_at_every_row_count(bias):
    torch.manual_seed(0)
    plain = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    packed = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    packed.load_state_dict(plain.state_dict())
    assert pack_linear_weights(packed) == 1 and _packed_forward(packed)
    for rows in (1, 2, 3, 15, 16, 17, 63, 64, 65, 300, 2048):
        x = torch.randn(rows, 96).to(torch.bfloat16)
        assert torch.equal(packed(x), plain(x)), rows


@needs_packing
def test_inputs_the_packed_path_does_not_take_use_the_parameter():
    torch.manual_seed(0)
    layer = nn.Linear(32, 48).to(torch.bfloat16)
    expected_3d = layer(torch.ones(2, 5, 32, dtype=torch.bfloat16))
    pack_linear_weights(layer)
    assert torch.equal(layer(torch.ones(2, 5, 32, dtype=torch.bfloat16)), expected_3d)


def test_float32_and_float64_layers_are_left_as_they_are():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).double())
    assert pack_linear_weights(model) == 0
    assert not any(_packed_forward(m) for m in model)
    assert "float32" in packing_problem(CPU, torch.float32)


@needs_packing
def test_a_bf16_engine_on_the_cpu_packs_every_projection_and_gives_the_unpacked_tokens(monkeypatch):
    config = dict(model="tiny", dtype="bfloat16", device="cpu", seed=3, max_tokens_per_step=64)
    prompts = [[5, 6, 7, 8, 9] * 3, [40, 41, 42], list(range(60, 90))]

    def run() -> tuple[Engine, dict[int, list[int]]]:
        engine = Engine(EngineConfig(**config))
        for p in prompts:
            engine.add_request(p, max_new_tokens=12)
        while engine.has_unfinished():
            engine.step()
        return engine, engine.outputs()

    engine, packed_out = run()
    linears = [m for m in engine.runner.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(_packed_forward(m) for m in linears)
    monkeypatch.setattr("engine.runner.model_runner.pack_linear_weights", lambda model: 0)
    engine, plain_out = run()
    assert not any(_packed_forward(m) for m in engine.runner.model.modules() if isinstance(m, nn.Linear))
    assert packed_out == plain_out
