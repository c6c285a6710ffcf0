"""memory_leak: the leaky plugin makes the metrics screen's leak detector fire; without it, it does not."""

from rich.console import Console

from cbtui.metrics_view import memory_table, render_metrics
from engine.records.metrics import MetricsCollector
from engine.plugins.builtin import LeakyPlugin
from engine.profiling.memory_profiler import MemoryProfiler
from engine.profiling.sources import RssSource
from scenarios import load_scenario


def profile(variant):
    """The run, read by a profiler the way the dashboard's metrics screen reads it (one sample a step)."""
    engine = load_scenario("memory_leak").build_engine(variant)
    profiler = MemoryProfiler(sources=[RssSource()])
    while engine.has_unfinished():
        profiler.observe(engine.step())
    return engine, profiler


def screen_text(profiler) -> str:
    console = Console(width=100, record=True)
    console.print(memory_table(profiler))
    return " ".join(console.export_text().split())


def first_lines(profiler, rows=4) -> str:
    """What the metrics screen shows first at 80 columns (the memory table is further down)."""
    console = Console(width=76, record=True)
    console.print(render_metrics(MetricsCollector(), profiler, []))
    return " ".join(" ".join(console.export_text().splitlines()[:rows]).split())


def test_the_leak_detector_fires_with_the_leaky_plugin_and_not_without():
    engine, profiler = profile(None)
    plugin = engine.plugins.plugins[0]
    assert isinstance(plugin, LeakyPlugin) and plugin.bytes_kept > 16 * 2**20
    verdict = profiler.check_leaks()["rss"]
    assert verdict and "in every part of the window" in verdict.reason
    assert "LEAK? grew" in screen_text(profiler)
    assert f"LEAK? rss {verdict.reason}" in first_lines(profiler)
    leaky_outputs = engine.outputs()

    engine, profiler = profile("fixed")
    assert engine.plugins.plugins == []
    assert not profiler.check_leaks()["rss"] and "LEAK?" not in screen_text(profiler)
    assert "LEAK?" not in first_lines(profiler, rows=100)
    assert engine.outputs() == leaky_outputs  # the leak changes memory, not tokens
