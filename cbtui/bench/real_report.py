"""What `cbtui bench real` prints: per request count, the bench table and the lines in the goal's terms."""

from __future__ import annotations

from .hf_systems import CB_NAME, STATIC_NAME
from .llama_cpp_system import NAME as LLAMA_CPP_NAME
from .real import machine_share

# Issue #33's goals: ours continuous over transformers' padded generate, by request count; and the
# share of the machine's matmul speed over the whole run.
GOAL_VS_PADDED = {16: 2.0, 64: 3.0}
GOAL_SHARE = 0.5


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def heading(report: dict) -> str:
    bf16 = ", ".join(report["bf16_cpu"]) or "none"
    lengths = (f"each request stops at end of sequence, at most {report['max_new_tokens']} new tokens (greedy)"
               if report.get("stop_at_eos") else
               f"{report['max_new_tokens']} new tokens per request (greedy, end-of-sequence ignored)")
    return (f"cbtui bench real · model {report['model']} {report['dtype']} · {lengths} · torch threads "
            f"{report['threads']} (inter-op 1) · load average (1/5/15 min) {_load(report['load_start'])} at the "
            f"start, {_load(report['load_end'])} at the end · {report['seconds']:.0f} s · CPU bf16 flags: {bf16}\n"
            f"{report['llama_cpp']}")


def same_tokens(row: dict | None, requests: int) -> str:
    if row is None or not row.get("available") or row.get("same_outputs_as_ours") is None:
        return "not compared"
    return f"{round(row['same_outputs_as_ours'] * requests)} of {requests} requests"


def goal_needs(share: dict, padded_wall_s: float, goal: float) -> str:
    """What the speed goal asks of the machine: ours within HF's wall time over the goal means
    running the run's arithmetic at this share of the measured matmul speed, everything else
    (attention, norms, sampling, the host) included in that time."""
    ideal_s = share["share"] * share["wall_s"]
    within = padded_wall_s / goal
    return (f"the {goal:.0f}x goal asks for ours within {within:.2f} s: {ideal_s / within:.0%} of the machine's matmul "
            f"speed over the whole run (its matmuls alone take {ideal_s:.2f} s at the measured speed)")


def size_lines(size: dict, stop_at_eos: bool = False) -> list[str]:
    n = size["requests"]
    rows = {s["system"]: s for s in size["report"]["systems"]}
    llama = rows.get(LLAMA_CPP_NAME)
    lines = [f"tokens identical to ours continuous (worst repetition): HF padded generate "
             f"{same_tokens(rows.get(STATIC_NAME), n)}, HF generate_batch {same_tokens(rows.get(CB_NAME), n)}"
             + (f", llama.cpp {same_tokens(llama, n)} (its own quantized kernels)" if llama is not None else "")]
    for name, row in rows.items():
        if name.startswith("ours continuous, ") and row.get("available"):
            speedup = 1 / row["output_tok_s_vs_ours"]
            lines.append(f"{name}: {same_tokens(row, n)} with ours continuous' tokens, "
                         f"{row['output_tok_s']:,.0f} output tok/s (ours continuous {speedup:.2f}x it)")
    share = machine_share(size)
    if share is None and size["flops"] is None:
        lines.append("share of the machine's matmul: measured on fixed lengths only (run without --stop-at-eos)")
    if share is not None:
        verdict = "met" if share["share"] >= GOAL_SHARE else "not met"
        lines.append(f"ours continuous: {share['gflop']:.3g} GFLOP in {share['wall_s']:.2f} s = "
                     f"{share['achieved_gflop_s']:.3g} GFLOP/s; the machine's matmul on the model's shapes, same run: "
                     f"{share['decode_matmul_gflop_s']:.0f} GFLOP/s at {n} rows, {share['prefill_matmul_gflop_s']:.0f} "
                     f"at prefill rows, {share['matmul_gflop_s']:.0f} over this run's mix; share "
                     f"{share['share']:.0%} (goal >= {GOAL_SHARE:.0%}: {verdict})")
    padded = rows.get(STATIC_NAME)
    goal = GOAL_VS_PADDED.get(n)
    if padded is not None and padded.get("available") and padded.get("ours_over_this"):
        ratio = padded["ours_over_this"]
        runs = ", ".join(f"{r:.2f}" for r in padded.get("ours_over_this_runs", []))
        target = f" (goal >= {goal:.0f}x: {'met' if ratio >= goal else 'not met'})" if goal else ""
        if stop_at_eos:  # the goals are set on fixed lengths, where padding wastes nothing
            target = " (requests stop at end of sequence; the goals are for fixed lengths)"
        lines.append(f"ours continuous over HF padded generate: {ratio:.2f}x median of paired runs [{runs}]{target}")
        if goal and share is not None and not stop_at_eos:
            lines.append(goal_needs(share, padded["wall_s"], goal))
    if llama is not None and llama.get("available") and llama.get("ours_over_this"):
        runs = ", ".join(f"{r:.2f}" for r in llama.get("ours_over_this_runs", []))
        lines.append(f"ours continuous over llama.cpp (one request at a time): {llama['ours_over_this']:.2f}x "
                     f"median of paired runs [{runs}]")
    return lines
