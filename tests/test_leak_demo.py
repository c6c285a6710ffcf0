"""memory_leak: the leaky plugin makes the metrics screen's leak detector fire, and memory by context
puts the growth in the engine steps; without the plugin neither happens."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Both tests read one probe: a real memory_leak run in a fresh process (seconds).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probe():
    root = Path(__file__).parent.parent  # this checkout's code, not whatever the venv's install points at
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("leak_probe.py"))], capture_output=True,
                         text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def test_the_leak_detector_fires_with_the_leaky_plugin_and_not_without(probe):
    leaky, fixed = probe["leaky"], probe["fixed"]
    assert leaky["kept"] > 16 * 2**20
    assert leaky["leaking"] and "in every part of the window" in leaky["reason"]
    top = " ".join(leaky["top"].split())
    assert f"LEAK? rss {leaky['reason']}" in top  # the first lines of the screen at 80 columns say why
    assert not fixed["leaking"] and "LEAK" not in fixed["screen"]
    assert leaky["outputs"] == fixed["outputs"]  # the leak changes memory, not tokens


def test_memory_by_context_puts_the_growth_in_the_engine_steps(probe):
    leaky, fixed = probe["leaky"], probe["fixed"]
    # What the steps left behind, but for the largest single step (the first steps of a fresh process
    # allocate once for good: a jump, not a leak; the leak is many small climbs).
    steady = {name: run["step_growth"] - run["step_most"] for name, run in probe.items()}
    assert steady["leaky"] > 16 * 2**20 and steady["fixed"] < 4 * 2**20
    for run in (leaky, fixed):
        table = run["by_context"]
        assert "Memory by context (DetailedMemoryProfiler)" in table
        names = [line.split("  ")[0].strip() for line in table.splitlines()]
        assert {"weights", "KV pool", "engine steps", "records"} <= set(names)
