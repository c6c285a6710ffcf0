"""priority_sla: the plugin cuts high-priority TTFT, meets the SLA that the no_priority variant misses."""

import subprocess
import sys

import pytest

from engine import Engine, EngineConfig
from engine.plugins.builtin import PriorityPlugin
from engine.records import StepRecord
from engine.records.metrics import MetricsCollector, sla_met
from engine.records.summary import format_table, summarize
from scenarios import ScenarioError, load_scenario, loads
from scenarios.compare import run_records


def run(scenario, variant=None):
    eng = scenario.build_engine(variant, device="cpu")
    steps = 0
    while eng.has_unfinished():
        eng.step()
        steps += 1
    return eng, steps


def test_priority_plugin_cuts_urgent_ttft_and_keeps_throughput():
    scenario = load_scenario("priority_sla")
    assert [p["name"] for p in scenario.plugins] == ["priority"] and scenario.variant_plugins == {"no_priority": []}
    with_plugin, steps_with = run(scenario)
    without_plugin, steps_without = run(scenario, "no_priority")
    assert without_plugin.header().plugins == [] and with_plugin.header().plugins == ["priority"]

    def urgent_ttft(eng):
        return [r.first_token_step - r.arrival_step for r in eng.requests.values() if r.priority == 5]

    fast, slow = urgent_ttft(with_plugin), urgent_ttft(without_plugin)
    assert len(fast) == 4 and sum(fast) < sum(slow) / 2, (fast, slow)
    assert steps_with <= steps_without * 1.1, (steps_with, steps_without)
    text = " ".join(scenario.description.split())  # the numbers it states are the run's
    for fact in (f"first token within {max(fast)} step", f"wait {min(slow)} to {max(slow)} steps",
                 f"takes {steps_with} steps instead of {steps_without}"):
        assert fact in text, fact


def sla_of(records):
    collector = MetricsCollector()
    for record in records:
        collector.observe(record)
    return collector.summary()["sla"]


def test_sla_attainment_is_counted_with_and_without_the_plugin():
    scenario = load_scenario("priority_sla")
    with_plugin, without = run_records(scenario), run_records(scenario, "no_priority")
    assert sla_of(with_plugin) == {"with_deadline": 4, "met": 4, "missed": 0, "attainment": 1.0}
    assert sla_of(without) == {"with_deadline": 4, "met": 0, "missed": 4, "attainment": 0.0}
    # The plugin's completion hook keeps the same score, shown in the step header.
    assert "priority: deadlines 4 met, 0 missed (high priority)" in with_plugin[-1].annotations
    table = format_table([summarize(with_plugin, "(scenario)"), summarize(without, "no_priority")])
    assert table[0].endswith("SLA met") and table[1].endswith("4/4") and table[2].endswith("0/4")
    # A run without deadlines has no SLA column.
    plain = summarize(run_records(load_scenario("kv_pressure"), "roomy"), "x")
    assert "SLA" not in format_table([plain])[0]


def test_sla_met_counts_a_running_request_past_its_deadline_as_missed():
    assert sla_met(None, 5, 9) is None
    assert sla_met(10, 10, 12) is True and sla_met(10, 11, 12) is False
    assert sla_met(10, None, 10) is None and sla_met(10, None, 11) is False


def test_the_completion_hook_scores_each_class():
    plugin = PriorityPlugin(high_priority=5)
    engine = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=8, prefill_chunk_size=8,
                                 num_blocks=64), plugins=[plugin])
    engine.add_request([3] * 8, max_new_tokens=4, priority=5, deadline_step=5)  # met: done at step 4
    engine.add_request([4] * 8, max_new_tokens=4, priority=0, deadline_step=2)  # cannot make it
    engine.add_request([5] * 8, max_new_tokens=4)  # no deadline: not scored
    engine.run_until_done()
    assert plugin.met == {"high": 1, "low": 0} and plugin.missed == {"high": 0, "low": 1}
    assert plugin.describe() == "priority: deadlines 1 met, 0 missed (high priority); 0 met, 1 missed (low priority)"


def test_old_records_without_deadlines_still_read():
    record = run_records(load_scenario("kv_pressure"), "roomy", max_steps=2)[-1]
    data = record.to_dict()
    for view in data["requests"]:
        del view["deadline_step"]
    assert all(v.deadline_step is None for v in StepRecord.from_dict(data).requests)


BASE = """
[engine]
device = "cpu"
[[generators]]
count = 3
prompt_len = 8
max_new_tokens = 2
arrival = "uniform"
arrival_span = 4
deadline_after = 6
[[plugins]]
name = "priority"
"""


def test_generators_give_deadlines_relative_to_arrival_and_variants_their_own_plugins():
    scenario = loads(BASE + '[compare.reserved]\nplugins = ["priority:reserve_tokens=4,high_priority=1"]\n'
                            '[compare.none]\nplugins = []\n')
    assert all(r["deadline_step"] == r["arrival_step"] + 6 for r in scenario.requests)
    assert scenario.variant_plugins == {"reserved": [{"name": "priority",
                                                      "options": {"reserve_tokens": 4, "high_priority": 1}}],
                                        "none": []}
    assert scenario.build_engine("reserved").plugins.plugins[0].reserve_tokens == 4
    assert scenario.build_engine("none").plugins.plugins == []


@pytest.mark.parametrize("variant, message", [
    ("plugins = \"priority\"", "must be an array of plugin specs"),
    ("plugins = [\"nope\"]", "unknown plugin 'nope'"),
    ("plugins = [\"os:system\"]", "--trust-plugins"),
    ("plugins = [\"priority:reserve_tokens=-1\"]", "reserve_tokens=-1"),
])
def test_bad_variant_plugins_are_one_line_errors(variant, message):
    with pytest.raises(ScenarioError, match=message) as info:
        loads(BASE + f"[compare.v]\n{variant}\n")
    assert "[compare.v] plugins" in str(info.value) or "--trust-plugins" in str(info.value)


@pytest.mark.slow
def test_headless_comparison_shows_the_sla_column():
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "priority_sla", "--headless"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows: dict[str, list[str]] = {}  # the table comes in parts of 80 columns: a run's row in each
    for line in res.stdout.splitlines():
        if line.startswith(("(scenario)", "no_prio")):
            rows.setdefault(line.split()[0], []).append(line)
    assert "plugins=priority" in rows["(scenario)"][0] and rows["(scenario)"][-1].endswith("4/4")
    assert "plugins=none" in rows["no_priority"][0] and rows["no_priority"][-1].endswith("0/4")
