"""priority_sla: the plugin cuts high-priority TTFT while total throughput holds."""

from dataclasses import replace

from scenarios import load_scenario


def run(scenario):
    eng = scenario.build_engine(device="cpu")
    steps = 0
    while eng.has_unfinished():
        eng.step()
        steps += 1
    return eng, steps


def test_priority_plugin_cuts_urgent_ttft_and_keeps_throughput():
    scenario = load_scenario("priority_sla")
    assert [p["name"] for p in scenario.plugins] == ["priority"]
    with_plugin, steps_with = run(scenario)
    without_plugin, steps_without = run(replace(scenario, plugins=[]))

    def urgent_ttft(eng):
        return [r.first_token_step - r.arrival_step for r in eng.requests.values() if r.priority == 5]

    fast, slow = urgent_ttft(with_plugin), urgent_ttft(without_plugin)
    assert len(fast) == 4 and sum(fast) < sum(slow) / 2, (fast, slow)
    assert steps_with <= steps_without * 1.1, (steps_with, steps_without)
    text = " ".join(scenario.description.split())  # the numbers it states are the run's
    for fact in (f"within {max(fast)} step of arriving", f"wait {min(slow)} to {max(slow)} steps",
                 f"takes {steps_with} steps instead of {steps_without}"):
        assert fact in text, fact
