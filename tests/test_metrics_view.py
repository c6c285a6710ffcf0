"""The metrics screen's content, rendered to text from a real run."""

import re

from rich.console import Console

from cbtui.render.metrics_view import distribution, render_metrics, sparkline
from engine.profiling.leak_detector import MemoryLeakDetector
from engine.profiling.memory_profiler import MemoryProfiler
from engine.profiling.sources import FunctionSource
from engine.records.metrics import MetricsCollector
from scenarios import load_scenario


def rendered(growth_per_step: int, width: int = 100) -> str:
    engine = load_scenario("priority_sla").build_engine(device="cpu")
    collector = MetricsCollector()
    level = {"bytes": 100 << 20}

    def fake_memory():  # a deterministic source: flat, or leaking a fixed amount per step
        level["bytes"] += growth_per_step
        return {"fake": level["bytes"]}

    profiler = MemoryProfiler(sources=[FunctionSource("fake", fake_memory)])
    while engine.has_unfinished():
        record = engine.step()
        collector.observe(record)
        profiler.observe(record)
    console = Console(width=width, record=True, color_system=None)
    console.print(render_metrics(collector, profiler, record.annotations,
                                 MemoryLeakDetector(window=16, min_growth_bytes=1 << 20), width=width))
    return console.export_text()


def test_metrics_screen_shows_distributions_throughput_plugins_and_memory():
    text = rendered(growth_per_step=0)
    assert "steps 0–53" in text and "output tokens" in text and re.search(r"output \d+ tok/s now", text)
    assert "(prefill + decode, the header's" in text and "step time: last " in text
    assert "SLA: 4 of 4 deadlines met, 0 missed" in " ".join(text.split())
    requests = len(load_scenario("priority_sla").requests)
    assert "TTFT, steps" in text and f"n={requests} " in text  # every request's first token counted
    assert "Inter-token latency, steps" in text
    assert "plugins: priority" in text
    assert "fake" in text and "ok" in text and "LEAK?" not in text


def test_a_leak_shows_up_on_the_metrics_screen():
    assert "LEAK?" in rendered(growth_per_step=1 << 20)


def test_sparkline_scales_to_its_range():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5], 8) == "▅▅▅"
    assert sparkline([1, 2, 3], 2) == "▁█"  # only the last `width` values
    assert sparkline([], 4) == ""


def test_at_80_columns_titles_and_summary_lines_stay_whole():
    text = rendered(growth_per_step=0, width=76)  # the screen's body at 80 columns (border, padding)
    # the four summary lines, each on one line (a wrapped one would end "max" and go on below)
    assert len(re.findall(r"n=\d+ p50 \S+ p90 \S+ max \d\S*", text)) == 4
    assert "Inter-token latency, steps" in text and "Inter-token latency, engine ms" in text
    assert "ms p90 " in text and "leaks" in text


def test_distribution_figures_never_use_exponents():
    console = Console(width=60, record=True, color_system=None)
    console.print(distribution("TTFT, steps", [3, 120, 250, 1500], ""))
    text = console.export_text()
    assert "e+" not in text and "1.5k" in text and "n=4 p50 185 p90 1.1k max 1.5k" in text


def test_whole_steps_get_whole_bins():
    """TTFT in steps said '0–1.2' and '1–1': a step count has no fractions."""
    from cbtui.render.metrics_view import whole_histogram

    console = Console(width=60, record=True, color_system=None)
    console.print(distribution("TTFT, steps", [0, 0, 1, 1, 2, 3, 7], ""))
    ranges = [line.split()[0] for line in console.export_text().splitlines()[1:-1]]
    assert ranges == ["0–1", "2–3", "4–5", "6–7"]
    assert whole_histogram([3, 3, 4], 6) == [(3, 3, 2), (4, 4, 1)]
    assert whole_histogram([5], 6) == [(5, 5, 1)]
    console = Console(width=60, record=True, color_system=None)
    console.print(distribution("TTFT, steps", [1, 1, 2], ""))
    assert [line.split()[0] for line in console.export_text().splitlines()[1:-1]] == ["1", "2"]


def test_the_step_count_uses_the_headers_numbers_and_both_rates_are_labelled():
    """'m' said '19 steps' while the header said 'Step 17 of 18'; the header's '4.7k tok/s' (prefill
    and decode) and the screen's 'throughput now 1187 tok/s' (output) had no label to tell them apart."""
    from cbtui.render.metrics_view import processed_rate, step_range

    text = rendered(growth_per_step=0)
    assert "54 steps" not in text and "steps 0–53" in text
    assert step_range([]) == "no steps yet"
    engine = load_scenario("mixed_load").build_engine(device="cpu")
    records = [engine.step() for _ in range(3)]
    assert processed_rate(records) == sum(r.decode_tokens + r.prefill_tokens for r in records) / sum(
        r.wall_time_s for r in records)
