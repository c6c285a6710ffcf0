"""The metrics screen's content: latency distributions, throughput over time, memory profile.

Pure rendering from a MetricsCollector and a MemoryProfiler into rich renderables, so the
Textual screen stays thin and tests can check the text without running an app. The profiler is
read through the small MemoryProfile interface below, so this module (and the metrics screen
widget that imports it) needs nothing from the engine but engine.records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from engine.records.metrics import MetricsCollector
from engine.records.stats import describe, histogram
from engine.records.text import visible

from .colors import BAD, CALM, GOOD, NOTE
from .formatting import duration, human_rate, short_number

SPARK = "▁▂▃▄▅▆▇█"
RATE_WINDOW = 16  # steps averaged for the processed tokens per second the header shows
BAR = "█"
# Memory by context (engine.profiling's DetailedMemoryProfiler): what the engine says it holds, and
# the contexts the dashboard measures: every engine step (engine thread), every record it keeps.
WEIGHTS, KV_POOL = "weights", "KV pool"
STEP_CONTEXT, RECORDS_CONTEXT = "engine steps", "records"
CONTEXT_ROWS = {STEP_CONTEXT: "engine steps", RECORDS_CONTEXT: "records"}


class LeakReport(Protocol):
    """A leak detector's verdict on one series (engine.profiling's LeakVerdict): true when leaking."""

    @property
    def reason(self) -> str: ...

    def __bool__(self) -> bool: ...


class MemoryProfile(Protocol):
    """What the memory table reads from a profiler (engine.profiling's MemoryProfiler)."""

    @property
    def unavailable(self) -> Mapping[str, str]: ...  # source name -> why it gives no readings

    def summary(self) -> Mapping[str, Mapping[str, int]]: ...

    def series(self, metric: str) -> Sequence[tuple[int | None, int]]: ...

    def check_leaks(self, detector: Any = None) -> Mapping[str, LeakReport]: ...


class _StepTokens(Protocol):
    """A step's tokens and time: a StepRecord, or the collector's StepStats."""

    @property
    def decode_tokens(self) -> int: ...
    @property
    def prefill_tokens(self) -> int: ...
    @property
    def wall_time_s(self) -> float: ...


def processed_rate(steps: Sequence[_StepTokens]) -> float | None:
    """Tokens processed (prefill + decode) per engine second over `steps`: the header's tok/s (over
    the last RATE_WINDOW steps), not the output tokens per second the metrics screen charts."""
    seconds = sum(s.wall_time_s for s in steps)
    return sum(s.decode_tokens + s.prefill_tokens for s in steps) / seconds if seconds > 0 else None


def step_range(steps: Sequence[Any]) -> str:
    """The steps observed, in the header's numbering ('steps 0–18'), not a count that reads one more."""
    if not steps:
        return "no steps yet"
    first, last = steps[0].step, steps[-1].step
    return f"step {first}" if first == last else f"steps {first}–{last}"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last `width` values as one line of block characters, scaled to their own range."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return SPARK[len(SPARK) // 2] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / (high - low) * len(SPARK)))] for v in values)


def whole_histogram(values: Sequence[float], bins: int) -> list[tuple[int, int, int]]:
    """(first, last, count) for whole-number values (steps): at most `bins` bins of equal whole widths,
    each naming the values it holds, both ends included ('0–2', '3'); never '0–1.2' or '1–1'."""
    low, high = int(min(values)), int(max(values))
    width = -(-(high - low + 1) // bins)
    counts: dict[int, int] = {}
    for v in values:
        start = low + (int(v) - low) // width * width
        counts[start] = counts.get(start, 0) + 1
    return [(start, min(start + width - 1, high), counts.get(start, 0)) for start in range(low, high + 1, width)]


def distribution(title: str, values: list[float], unit: str, bins: int = 6, width: int = 24) -> Table:
    """A small histogram table with the summary line (n, p50, p90, max) as its caption; never
    narrower than its title and caption, which would otherwise wrap mid-phrase (at 80 columns)."""
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 1),
                  min_width=len(title))
    table.add_column("range", justify="right", no_wrap=True)
    table.add_column("bar", no_wrap=True)
    table.add_column("count", justify="right")
    if not values:
        table.add_row("", Text("no data yet", style="dim"), "")
        return table
    whole = all(float(v).is_integer() for v in values)
    rows = whole_histogram(values, bins) if whole else histogram(values, bins)
    most = max(count for _, _, count in rows)
    for low, high, count in rows:
        bar = BAR * max(1 if count else 0, round(count / most * width))
        label = f"{short_number(low)}" if whole and low == high else f"{short_number(low)}–{short_number(high)}"
        table.add_row(f"{label}{unit}", Text(bar, style=CALM), str(count))
    d = describe(values)
    figures = " ".join(f"{key} {short_number(value)}{unit}" for key in ("p50", "p90", "max")
                       if (value := d[key]) is not None)  # (never None: there are values)
    table.caption = f"n={d['count']} {figures}"
    table.caption_justify = "left"
    table.min_width = max(len(title), len(table.caption))
    return table


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def memory_table(profiler: MemoryProfile, detector: object = None,
                 verdicts: Mapping[str, LeakReport] | None = None) -> Group:
    """The memory profile; `detector` (a MemoryLeakDetector) is the profiler's default when None."""
    table = Table(title="Memory profile (per step)", title_justify="left", box=None, padding=(0, 1))
    for column in ("source", "now", "min", "max", "growth", "trend", "leaks"):
        table.add_column(column, no_wrap=column != "leaks", min_width=6)
    verdicts = profiler.check_leaks(detector) if verdicts is None else verdicts
    for metric, stats in profiler.summary().items():
        series = [v for _, v in profiler.series(metric)]
        verdict = verdicts[metric]
        leak = Text("LEAK? " + verdict.reason, style=f"bold {BAD}") if verdict else Text("ok", style=GOOD)
        table.add_row(metric, _mib(stats["last"]), _mib(stats["min"]), _mib(stats["max"]),
                      _mib(stats["growth"]), sparkline(series, 16), leak)
    if not table.rows:
        table.add_row(Text("no samples yet", style="dim"), "", "", "", "", "", "")
    unavailable = [Text(visible(f"{name}: unavailable ({reason})"), style="dim")
                   for name, reason in profiler.unavailable.items()]
    return Group(table, *unavailable)


def context_table(profiler: object) -> Table | None:
    """Memory by context: what the weights and the KV pool hold, then, per measured context, how
    many times it ran, how much memory it left behind in all (and at most in one run), and the
    highest reading seen inside. None for a profiler without contexts (the plain MemoryProfiler)."""
    summary = getattr(profiler, "context_summary", None)
    if summary is None:
        return None
    contexts = summary()
    held: Mapping[str, int] = getattr(profiler, "held", {})
    table = Table(title="Memory by context (DetailedMemoryProfiler)", title_justify="left", box=None,
                  padding=(0, 1))
    for column in ("part", "runs", "holds/grew", "most in 1", "peak"):
        table.add_column(column, no_wrap=True, justify="left" if column == "part" else "right")
    for name in (WEIGHTS, KV_POOL):
        if name in held:
            table.add_row(name, "", _mib(held[name]), "", "")
    measured = [m for c in contexts.values() for m in c["total"]]
    metric = next((m for m in ("cuda.allocated", "rss", *measured) if m in measured), None)
    for name, label in CONTEXT_ROWS.items():
        entry = contexts.get(name)
        if entry is None or metric is None:
            continue
        table.add_row(label, str(entry["count"]), _signed_mib(entry["total"].get(metric, 0)),
                      _signed_mib(entry["max"].get(metric, 0)), _mib(entry["peak"].get(metric, 0)))
    if not table.rows:
        return None
    table.caption = (f"{metric or 'no live memory'}: weights and KV pool are what the engine holds; 'grew' is "
                     f"what all runs of a context left behind (engine steps: activations, caches, leaks; "
                     f"records: the dashboard's history and metrics)")
    table.caption_justify = "left"
    return table


def _signed_mib(value: float) -> str:
    return f"{'+' if value >= 0 else '-'}{abs(value) / 2**20:.1f} MiB"


def render_metrics(collector: MetricsCollector, profiler: MemoryProfile, annotations: list[str],
                   detector: object = None, width: int = 80) -> Group:
    """Everything the metrics screen shows, as one rich renderable, laid out for `width` columns."""
    bar = max(6, min(30, width // 2 - 28))
    summary = collector.summary()
    totals = summary["throughput"]
    throughput = [tps for _, tps in collector.throughput_series()]
    steps = collector.steps
    head = Text()
    head.append(f"{step_range(steps)}  ", style="bold")
    head.append(f"{totals['output_tokens']} output tokens  ")
    if totals["budget_utilisation"] is not None:
        head.append(f"budget used {totals['budget_utilisation']:.0%}  ")
    head.append(f"engine time {collector.engine_time_s:.2f} s")
    lines: list[RenderableType] = [head]
    if steps:  # lines of their own: the head fills 80 columns
        wall = summary["step_wall_s"]
        lines.append(Text(f"step time: last {duration(steps[-1].wall_time_s)}  p50 {duration(wall['p50'])}  "
                          f"max {duration(wall['max'])}  (engine wall time)"))
    if throughput:
        lines.append(Text.assemble((f"output {throughput[-1]:.0f} tok/s", "bold"), " now ",
                                   (sparkline(throughput, 32), GOOD)))
        processed = processed_rate(steps[-RATE_WINDOW:])
        if processed is not None:
            lines.append(Text.assemble((f"total {human_rate(processed)} tok/s", "bold"),
                                       f" (prefill + decode, the header's; last {RATE_WINDOW} steps)"))
    spec = collector.summary()["speculation"]
    if spec["drafts_proposed"]:
        lines.append(Text(f"speculation: {spec['drafts_accepted']} of {spec['drafts_proposed']} drafts accepted "
                          f"({spec['acceptance_rate']:.0%}), {spec['mean_accepted_length']:.2f} per speculating "
                          f"decode, {spec['tokens_per_step_per_request']:.2f} tokens per decode per step"))
    cache = summary["prefix_cache"]
    if cache is not None and cache["token_hit_rate"] is not None:
        blocks = "" if cache["block_hit_rate"] is None else f", {cache['block_hit_rate']:.0%} of full blocks"
        lines.append(Text(f"prefix cache: {cache['token_hit_rate']:.0%} of admitted tokens hit{blocks}; "
                          f"{cache['prefill_tokens_saved']} prefill tokens saved, {cache['evicted_blocks']} blocks "
                          f"evicted", style="cyan"))
    verdicts = profiler.check_leaks(detector)
    for metric, verdict in verdicts.items():  # at the top: the table is below the fold at 80x24
        if verdict:
            lines.append(Text(visible(f"LEAK? {metric} {verdict.reason}: something keeps what it should let go "
                                      f"(the profile below)"), style="bold red"))
    sla = summary["sla"]
    if sla["with_deadline"]:  # a line of its own: the head fills 80 columns
        lines.append(Text(f"SLA: {sla['met']} of {sla['with_deadline']} deadlines met, {sla['missed']} missed "
                          f"(a request meets its deadline_step when its last token is sampled by then)",
                          style="red" if sla["missed"] else "green"))
    if annotations:
        lines.append(Text("plugins: " + visible("; ".join(annotations)), style=NOTE))
    grid = Table.grid(padding=(0, 4))
    grid.add_column()
    grid.add_column()
    grid.add_row(distribution("TTFT, steps", collector.latencies("ttft_steps"), "", width=bar),
                 distribution("Inter-token latency, steps", collector.latencies("itl_steps"), "", width=bar))
    # Engine time in ms: '3.2ms' where seconds read '0.0032s', so a summary line fits half of 80 columns.
    ms = {name: [1000 * v for v in collector.latencies(name)] for name in ("ttft_s", "itl_s")}
    grid.add_row(distribution("TTFT, engine ms", ms["ttft_s"], "ms", width=bar),
                 distribution("Inter-token latency, engine ms", ms["itl_s"], "ms", width=bar))
    lines += [grid, memory_table(profiler, detector, verdicts)]
    by_context = context_table(profiler)
    if by_context is not None:
        lines.append(by_context)
    return Group(*lines)
