"""Plugin options from the command line (NAME:key=value,...) and adaptive_batch steered by queue and latency."""

import re
import subprocess
import sys

import pytest

from engine.plugins.builtin import AdaptiveBatchPlugin
from engine.plugins.spec import parse_plugin_spec
from scenarios import load_scenario


@pytest.mark.parametrize("spec, parsed", [
    ("adaptive_batch", ("adaptive_batch", {})),
    ("adaptive_batch:target_ms=5", ("adaptive_batch", {"target_ms": 5})),
    ("adaptive_batch:target_ms=2.5,max_budget=64,gain=1", ("adaptive_batch",
                                                         {"target_ms": 2.5, "max_budget": 64, "gain": 1})),
    ("priority:reserve_tokens=8, high_priority=5", ("priority", {"reserve_tokens": 8, "high_priority": 5})),
    ("pkg.mod:Cls", ("pkg.mod:Cls", {})),
    ("pkg.mod:Cls:flag=true,label=x", ("pkg.mod:Cls", {"flag": True, "label": "x"})),
])
def test_specs_parse_into_name_and_typed_options(spec, parsed):
    assert parse_plugin_spec(spec) == parsed


@pytest.mark.parametrize("spec, message", [
    ("adaptive_batch:target_ms=5,gain", "'gain' is not key=value"),
    ("adaptive_batch:target_ms=5,target_ms=6", "given twice"),
    (":target_ms=5", "no plugin name"),
])
def test_malformed_options_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_plugin_spec(spec)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", "scenario", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_options_reach_the_plugin():
    res = run_cli("mixed_load", "--headless", "--steps", "3", "--plugin", "adaptive_batch:target_ms=7,max_budget=99")
    assert res.returncode == 0, res.stderr
    assert "adaptive budget" in res.stdout and "(target 7 ms/step)" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("spec, message", [
    ("adaptive_batch:target_ms=0", "target_ms=0 must be a number > 0"),
    ("adaptive_batch:speed=3", "unexpected keyword argument 'speed'"),
    ("adaptive_batch:target_ms", None),  # no '=': read as module:Class, which cannot be imported
    ("adaptive_batch:target_ms=1,x", "'x' is not key=value"),
])
def test_bad_cli_options_are_one_line_and_exit_2(spec, message):
    res = run_cli("mixed_load", "--headless", "--steps", "1", "--plugin", spec)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("cbtui: error: --plugin") and len(res.stderr.strip().splitlines()) == 1
    assert message is None or message in res.stderr


def budgets(latency_fn):
    scenario = load_scenario("adaptive_batch")
    engine = scenario.build_engine()
    plugin = engine.plugins.plugins[0]
    assert isinstance(plugin, AdaptiveBatchPlugin)
    plugin.latency_fn = latency_fn  # deterministic: the measured wall time would depend on the machine
    out = []
    while engine.has_unfinished():
        record = engine.step()
        out.append((record.budget, record.annotations))
    return out


def test_the_budget_grows_with_the_queue_and_shrinks_when_it_empties():
    steps = budgets(lambda record: 0.001)
    series = [b for b, _ in steps]
    assert series[0] == 16 and max(series[:20]) == 128  # the first burst: up to max_budget
    first_peak = series.index(128)
    low = series.index(8, first_peak)  # the prompts are in: down to the decodes
    second_peak = series.index(128, low)  # the second burst: up again
    assert low < 20 and second_peak >= 50 and 8 in series[second_peak:]
    second_low = series.index(8, second_peak)
    text = " ".join(load_scenario("adaptive_batch").description.split())  # the steps it names are the run's
    for fact in (f"up to 128 by step {first_peak}", f"at step {low} \"budget 128 -> 8",
                 f"(steps {series.index(16, low)} to {second_peak})", f"down again at step {second_low}"):
        assert fact in text, fact
    notes = [a for _, annotations in steps for a in annotations]
    assert any("(adaptive: budget used up, 7 waiting for it)" in a for a in notes)
    assert any("(adaptive: no queue, 120 of 128 unused)" in a for a in notes)


def test_latency_caps_the_growth_and_a_slow_step_shrinks_the_budget():
    # Latency model: 1 ms per 0.4 tokens of budget: above 100 tokens a step misses the 250 ms target.
    series = [b for b, _ in budgets(lambda record: record.budget / 400)]
    assert 90 <= max(series) <= 101  # approaches the target from below; the queue alone reached 128
    plugin = AdaptiveBatchPlugin(target_ms=250, latency_fn=lambda record: record.budget / 400)
    plugin.budget = 128  # over the target: the next busy step cuts it, whatever the queue
    record = budgets_record(budget=128)
    plugin.after_step(None, record)
    assert plugin.budget == 113 and plugin.why == "320.0 ms > 250 ms target"


def budgets_record(budget):
    engine = load_scenario("adaptive_batch").build_engine()
    engine.plugins.plugins.clear()
    record = engine.step()
    record.budget = budget
    return record


def test_cbtui_plugins_lists_each_builtin_with_its_options():
    res = subprocess.run([sys.executable, "-m", "cbtui", "plugins"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "adaptive_batch" in res.stdout and "target_ms=20.0" in res.stdout and "latency_fn" not in res.stdout
    assert "reserve_tokens=0" in res.stdout


LESSON_SPEC = "adaptive_batch:ms_per_token=0.25,base_ms=2"  # lesson 15's latency model


def adaptive_run(spec: str, steps: int = 20):
    """(budget, annotations) of the first steps of burst_arrivals with the plugin `spec`."""
    engine = load_scenario("burst_arrivals").build_engine(plugins=(spec,))
    return [(r.budget, r.annotations) for r in (engine.step() for _ in range(steps))]


def test_a_modelled_latency_gives_the_same_budgets_however_slow_the_machine(monkeypatch):
    """Lesson 15 quotes 'budget 16 -> 29' at step 15: a loaded machine (every step seconds long) must
    not change it, as the measured wall time did (the panel said 8, the header 16)."""
    calm = adaptive_run(LESSON_SPEC)
    import engine.recorder as recorder

    clock = iter(range(0, 10**6, 5))  # each reading 5 s after the last: every step "takes" seconds
    monkeypatch.setattr(recorder.time, "perf_counter", lambda: float(next(clock)))
    loaded = adaptive_run(LESSON_SPEC)
    assert [b for b, _ in loaded] == [b for b, _ in calm]
    assert calm[15][0] == 29 and any("budget 16 -> 29 (adaptive: budget used up" in a for a in calm[15][1])
    # the measured latency, on the same slow clock, shrinks the budget to its minimum instead
    assert min(b for b, _ in adaptive_run("adaptive_batch")) == 8 and 29 not in [b for b, _ in adaptive_run(
        "adaptive_batch")]


def test_the_header_note_names_the_budget_the_step_ran_with_and_the_next():
    for budget, annotations in adaptive_run(LESSON_SPEC, 20):
        note = next(a for a in annotations if a.startswith("adaptive budget"))
        assert note.startswith(f"adaptive budget {budget}") and "latency modelled: 2 ms + 0.25 ms/token" in note
    plugin = AdaptiveBatchPlugin(ms_per_token=0.5)
    assert plugin.latency_fn(budgets_record(budget=16)) == pytest.approx(0.0005 * 16)  # 16 prompt tokens


@pytest.mark.parametrize("options, message", [
    (dict(ms_per_token=-1), "ms_per_token=-1 must be a number >= 0"),
    (dict(ms_per_token="fast"), "ms_per_token='fast' must be a number >= 0"),
    (dict(base_ms=2), "base_ms=2 is part of the latency model: give ms_per_token too"),
])
def test_a_bad_latency_model_is_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AdaptiveBatchPlugin(**options)
