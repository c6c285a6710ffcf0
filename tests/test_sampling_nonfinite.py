"""Weights that hold NaN or inf: a sampled request fails in one line naming it (SamplingError), not
torch's "probability tensor contains inf, nan" mid-run; greedy requests still finish; the command
line says it in one line, exit 2. (#30: hostile inputs; the weights are poisoned after loading, so
these tests do not depend on how checkpoints are read.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from engine import Engine, EngineConfig
from engine.sampling import SamplingError, probabilities, sample


def poisoned_engine(value: float, **config) -> Engine:
    engine = Engine(EngineConfig(model="tiny", device="cpu", **config))
    with torch.no_grad():
        engine.runner.model.norm.weight[3] = value  # every logit of every row goes non-finite
    return engine


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_sampled_request_on_non_finite_weights_fails_in_one_line_naming_it(value):
    engine = poisoned_engine(value)
    engine.add_request("greedy one", max_new_tokens=4)
    rid = engine.add_request("sampled one", max_new_tokens=4, temperature=0.8, seed=1)
    with pytest.raises(SamplingError) as caught:
        engine.run_until_done()
    message = str(caught.value)
    assert f"request {rid}:" in message and "\n" not in message and "NaN or inf" in message


def test_greedy_requests_on_non_finite_weights_still_finish():
    engine = poisoned_engine(float("nan"))
    rid = engine.add_request("greedy one", max_new_tokens=4)
    assert len(engine.run_until_done()[rid]) == 4


@pytest.mark.parametrize("top_k", [0, 5])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_sampler_refuses_non_finite_logits(bad, top_k):
    logits = torch.randn(2, 32)
    logits[1, 7] = bad
    if bad == float("-inf"):
        logits[1] = bad  # a -inf among finite logits is a zero probability; a whole row of it is none
    with pytest.raises(SamplingError, match="request 9: the model's logits hold"):
        probabilities(logits, 1.0, top_k, request_id=9)
    with pytest.raises(SamplingError, match="request 4"):
        sample(logits[1], 0.7, top_k, torch.Generator().manual_seed(0), request_id=4)
    assert probabilities(logits[:1], 1.0, top_k).shape == (1, 32)  # the finite row is fine


def test_speculative_sampling_on_non_finite_weights_fails_in_one_line():
    engine = poisoned_engine(float("nan"), speculative="draft", num_speculative_tokens=2)
    rid = engine.add_request("ab ab ab ab ab ab", max_new_tokens=6, temperature=1.0, seed=3)
    with pytest.raises(SamplingError, match=f"request {rid}:"):
        engine.run_until_done()


SCENARIO = """\
title = "Sampled"
[engine]
model = "tiny"
[[requests]]
prompt = "A sampled request on poisoned weights."
max_new_tokens = 8
temperature = 0.7
"""

POISON = textwrap.dedent("""
    import sys, torch
    import engine.runner.model_runner as mr
    real, value = mr.load_model, float(sys.argv.pop(1))
    def poisoned(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            model.norm.weight[0] = value
        return model
    mr.load_model = poisoned
    from cbtui.cli import main
    main()
""")


@pytest.mark.slow
@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("output", ["--headless", "--json"])
def test_cli_sampling_on_non_finite_weights_is_one_line_exit_2(tmp_path, value, output):
    path = tmp_path / "sampled.toml"
    path.write_text(SCENARIO)
    done = subprocess.run([sys.executable, "-c", POISON, value, "scenario", str(path), output, "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("cbtui: error: request 0: the model's logits hold"), done.stderr
