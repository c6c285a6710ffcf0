"""Runs memory_leak (the `fixed` variant, then the leaky scenario) in a fresh process, the way the
dashboard watches memory, and prints what the metrics screen would say as JSON. A fresh process:
RSS only grows when the allocator needs new pages, and a test process may hold freed memory from
earlier tests that a leak would quietly reuse."""

import io
import json
import sys

from rich.console import Console

from cbtui.apps.profiled_steps import ProfiledSteps
from cbtui.render.metrics_view import STEP_CONTEXT, context_table, render_metrics
from engine.profiling.detailed_memory_profiler import DetailedMemoryProfiler
from engine.profiling.sources import RssSource
from engine.records.metrics import MetricsCollector
from scenarios import load_scenario


def text(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def watch(variant):
    profiler = DetailedMemoryProfiler(sources=[RssSource()])
    engine = load_scenario("memory_leak").build_engine(variant)
    profiled = ProfiledSteps(engine, lambda: profiler)
    while profiled.has_unfinished():
        record = profiled.step()
        with profiler.context("records"):
            profiler.observe(record)
        profiler.hold("weights", record.memory.weight_bytes)
        profiler.hold("KV pool", record.memory.kv_pool_bytes)
    verdict = profiler.check_leaks()["rss"]
    screen = text(render_metrics(MetricsCollector(), profiler, []), 76)
    return {"leaking": bool(verdict), "reason": verdict.reason, "top": " ".join(screen.splitlines()[:4]),
            "screen": screen, "by_context": text(context_table(profiler), 120),
            "step_growth": profiler.context_summary()[STEP_CONTEXT]["total"]["rss"],
            "step_most": profiler.context_summary()[STEP_CONTEXT]["max"]["rss"],
            "kept": getattr(engine.plugins.plugins[0], "bytes_kept", 0) if engine.plugins.plugins else 0,
            "outputs": engine.outputs()}


if __name__ == "__main__":
    json.dump({"fixed": watch("fixed"), "leaky": watch(None)}, sys.stdout)
