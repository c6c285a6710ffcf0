"""The bench table (rich): one row per system, ratios against ours (continuous)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from engine.records.text import visible

COLUMNS = ("system", "out tok/s", "min..max", "total tok/s", "ours ÷ this", "TTFT p50/p90/p99 ms",
           "TPOT p50/p90/p99 ms", "steps", "wall s", "same out")


def _num(x, fmt="{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def _pcts(d: dict) -> str:
    return "/".join(_num(d[k], "{:,.1f}") for k in ("p50", "p90", "p99"))


def header(report: dict) -> str:
    m, w = report["machine"], report["workload"]
    pinned = ", pinned as `cbtui scenario` runs tiny on the CPU" if m.get("torch_threads_pinned") else ""
    cpu = f"CPU {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}{pinned})"
    where = f"GPU {m['gpu']}" if m.get("gpu") else cpu
    return (f"cbtui bench · workload {w['name']} · {w['requests']} requests, prompts {w['prompt_len'][0]}..."
            f"{w['prompt_len'][1]}, new tokens {w['new_tokens'][0]}...{w['new_tokens'][1]} · model {w['model']} "
            f"{report['dtype']} · {_repetitions(report)} · {where} · torch {m['torch']} · "
            f"transformers {m.get('transformers') or 'absent'}")


def _repetitions(report: dict) -> str:
    repeat = report.get("repeat", 1)
    return "1 run per system" if repeat == 1 else f"median of {repeat} runs per system, interleaved in rotating order"


def bench_table(report: dict) -> Table:
    # Text, not markup, with control characters written out: the model's path and a library's
    # error message (which quotes the path) come from outside.
    table = Table(title=Text(visible(header(report))), title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "system" else "right")
    for s in report["systems"]:
        if not s["available"]:
            table.add_row(s["system"], "unavailable", "", "", "", Text(visible(s["note"])), "", "", "", "")
            continue
        ratio = s.get("ours_over_this")
        same = s.get("same_outputs_as_ours")
        spread = f"{_num(s.get('output_tok_s_min'))}..{_num(s.get('output_tok_s_max'))}"
        table.add_row(s["system"], _num(s["output_tok_s"]), spread, _num(s["total_tok_s"]),
                      "1.00x" if ratio is None else f"{ratio:.2f}x", _pcts(s["ttft_ms"]), _pcts(s["tpot_ms"]),
                      _num(s["steps"]), _num(s["wall_s"], "{:.2f}"), "-" if same is None else f"{same:.0%}")
    notes = [f"{s['system']}: {s['note']}" for s in report["systems"] if s["available"] and s["note"]]
    legend = ["out tok/s: the median run's (min..max over the runs); ours ÷ this: ours continuous' output tok/s over "
              "this row's, paired within each repetition, the median of those ratios; TTFT, TPOT, steps, wall: the "
              "median run's; same out: requests whose tokens equal ours continuous' (the worst repetition)"]
    if report.get("interrupted"):
        legend.insert(0, "INTERRUPTED: rows with figures were measured in full; the rest say why they have none")
    if report["dtype"] == "bfloat16":
        legend.append("bf16: rounding depends on batch shape and can flip greedy choices between close logits, so "
                      "'same out' is no exactness check here (the fp32 tests are)")
    table.caption = Text(visible("\n".join(notes + legend), newlines=True))
    table.caption_justify = "left"
    return table


GOAL_VS_GENERATE_BATCH = 10  # issue #6: ours continuous at least 10x HF generate_batch's output tok/s


def goal_line(report: dict) -> str:
    """Ours continuous against HF generate_batch, in the goal's terms."""
    rows = {s["system"]: s for s in report["systems"]}
    ours, hf = rows.get("ours continuous"), rows.get("HF generate_batch")
    if not (ours and ours["available"] and hf and hf["available"]):
        return "goal (>= 10x HF generate_batch): not measured in this run (a system is unavailable)"
    ratio = hf.get("ours_over_this") or ours["output_tok_s"] / hf["output_tok_s"]  # paired when repeated
    verdict = "met" if ratio >= GOAL_VS_GENERATE_BATCH else "not met"
    return (f"goal (>= {GOAL_VS_GENERATE_BATCH}x HF generate_batch): ours {ours['output_tok_s']:,.0f} vs "
            f"{hf['output_tok_s']:,.0f} output tok/s = {ratio:.2f}x, {verdict}")


def variants_line(report: dict) -> str | None:
    """The other rows of ours continuous (ablations) against HF generate_batch, in the goal's terms:
    which pieces the goal depends on, read from the same run. None when there is nothing to say."""
    rows = {s["system"]: s for s in report["systems"]}
    hf = rows.get("HF generate_batch")
    variants = [s for s in report["systems"] if s["system"].startswith("ours continuous, ") and s["available"]]
    if not (hf and hf["available"] and variants):
        return None
    figures = ", ".join(f"{s['system'].removeprefix('ours continuous, ')} {s['output_tok_s'] / hf['output_tok_s']:.2f}x"
                        for s in variants)
    return f"ours continuous variants vs HF generate_batch: {figures}"


def main(argv: list[str] | None = None) -> None:
    """`python -m cbtui.bench.report FILE.json`: the table of a saved `cbtui bench --json` report."""
    import json
    import sys

    from rich.console import Console

    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as f:
        report = json.load(f)
    console = Console(width=200)
    console.print(bench_table(report))
    console.print(goal_line(report))
    variants = variants_line(report)
    if variants:
        console.print(variants)


if __name__ == "__main__":
    main()
