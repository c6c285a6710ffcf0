"""The lessons: a guided path through the seed's questions (docs: /work/shared/seed-qa.md), each
one a built-in scenario opened paused at the step that shows the point (a breakpoint), with what to
watch, the panel that shows it, and a question for the student.

Lessons are data: add one to LESSONS. `look_for` is text that is on screen at the
lesson's step: tests/test_lessons.py opens every lesson and checks it there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lesson:
    title: str
    scenario: str  # a built-in scenario
    break_on: str  # a breakpoint spec (cbtui/run/breakpoints.py): where the lesson pauses
    panel: str  # which panel shows it
    watch: str  # what to watch there
    question: str  # for the student
    seed_question: str  # the question of the seed this lesson answers
    look_for: str  # on screen at that step
    plugins: tuple[str, ...] = ()  # added to the scenario's own
    variant: str | None = None


LESSONS: tuple[Lesson, ...] = (
    Lesson(
        "Requests join and leave the batch", "mixed_load", "finish",
        "event line, Requests",
        "request 1 finished and gave its KV blocks back; the rest run on, and request 8 joins the same "
        "batch two steps later.",
        "Why can a request leave without waiting for the rest of its batch?",
        "What is continuous batching?", "request 1 finished"),
    Lesson(
        "Decodes first, then prefill chunks", "mixed_load", "step:6",
        "Token budget",
        "decodes (█, one token each) are placed first; prefill chunks (▓) fill what is left of the 48 tokens.",
        "With ten more decodes, how many prefill tokens would fit in this step?",
        "How does token budgeting work per step?", "decode demand"),
    Lesson(
        "The ragged mask: one batch, isolated requests", "mixed_load", "step:6",
        "Ragged mask",
        "each request lights only its own keys: a decode is one row seeing its whole history, a prefill "
        "chunk a causal triangle.",
        "Where would a lit cell be if two requests could see each other?",
        "How to ensure requests are isolated in mixed batches? How is causality enforced?", "queries"),
    Lesson(
        "prefill_pos and the first token", "mixed_load", "first:2",
        "Requests, event line",
        "request 2's 120-token prompt went in 16 tokens a step; when its last chunk ran, it sampled its "
        "first token: now a decode.",
        "Why did request 2 need 7 steps to its first token, request 1 none?",
        "How does the model transition from prefill to decode?", "request 2 sampled its first token"),
    Lesson(
        "Chunk size and time to first token", "long_prompt", "step:4",
        "Requests (why not scheduled)",
        "a 512-token prompt takes the whole 64-token budget each step; the short requests wait: 'token "
        "budget spent'.",
        "Rerun with --variant chunk_16: when do the short ones start now?",
        "How does prefill chunk size affect latency?", "token budget spent"),
    Lesson(
        "Decode demand over the cap", "decode_heavy", "step:6",
        "Token budget, event line",
        "12 requests want to decode, the cap is 8: 4 wait a step ('decode cap'); the least recently served "
        "go first next step.",
        "Can a decode starve here? Step on (n) and follow one that waited.",
        "What happens if decode demand exceeds the token budget?", "decode cap 8 left 4 waiting"),
    Lesson(
        "Dense vs paged KV, and flatten", "dense_vs_paged", "step:12",
        "KV cache",
        "one cell per 16-token block from one shared pool; a request's blocks need not be neighbours. "
        "Select one (↓).",
        "Attention reads its blocks in order: how much of the last is empty?",
        "Dense vs. paged KV cache? How do you flatten paged KV for attention?", "block 16 tok"),
    Lesson(
        "KV pressure and preemption", "kv_pressure", "preempt:3",
        "event line, KV cache",
        "request 1 needs a block and none is free: the newest request (3) is preempted, its blocks freed "
        "(×), and requeued.",
        "Why preempt the newest request rather than the oldest?",
        "What factors affect scalability of a continuous batching system?", "request 3 preempted"),
    Lesson(
        "Recompute after preemption", "kv_pressure", "recompute:3",
        "Requests (state, pre)",
        "request 3 is admitted again: state 'recompute', pre 1; it feeds its prompt and generated tokens "
        "again.",
        "What did preemption cost? Compare the steps with --variant roomy.",
        "What factors affect scalability of a continuous batching system?", "recompute"),
    Lesson(
        "Speculative decoding: more than one token a step", "speculative", "drafts:3",
        "Ragged mask, event line",
        "request 3 decodes 1 + 4 rows: its token and 4 n-gram drafts; drafts the target disagrees with "
        "(grey, ×) are rolled back.",
        "Why are outputs the same as plain decoding? Steps: --headless.",
        "How to support variable decode batch sizes?", "drafts accepted"),
    Lesson(
        "Prefix caching: a shared prompt computed once", "shared_prefix", "reuse",
        "KV cache, event line",
        "request 1 starts after the system prompt's blocks: computed once, shared (② = 2 holders, ○ "
        "cached-free).",
        "How many prefill tokens did caching save? --headless: prefill, cached.",
        "How would you implement a custom cache optimization plugin?", "from the prefix cache"),
    Lesson(
        "KV sharded across devices", "sharded_kv", "step:6",
        "KV cache, Memory",
        "two processes hold the KV, a pool each: a request's blocks alternate; partial attentions merge "
        "by log-sum-exp.",
        "What does --variant heads change in the pools and the bytes sent?",
        "How would you shard KV across devices?", "shard 1"),
    Lesson(
        "Static vs continuous batching", "static_vs_continuous", "step:5",
        "Token budget, event line",
        "request 2 finished at step 3, but its slot stays empty (padding) until the batch's longest "
        "member ends.",
        "How many slot-steps are wasted? Compare with --variant continuous.",
        "How do you measure the efficiency of continuous batching?", "padding"),
    Lesson(
        "Throughput vs latency", "budget_sweep", "step:4",
        "Token budget, header",
        "32 tokens a step: a bigger budget, fewer and fuller steps, each slower. The ms need a GPU; on "
        "a CPU, noise.",
        "--headless: how do steps and latency change from budget_16 to 128?",
        "Throughput vs. latency trade-offs?", "32 tokens per step"),
    Lesson(
        "Bursts and an adaptive budget", "burst_arrivals", "step:13",
        "header notes, budget title",
        "the adaptive_batch plugin sets each step's budget from the measured step time "
        "('budget 16 -> 64 (adaptive)').",
        "What should the budget do in a burst, and when the queue is empty?",
        "How would you implement adaptive batch sizing?", "(adaptive)", plugins=("adaptive_batch",)),
    Lesson(
        "Cache layout by request length", "layout_by_length", "preempt",
        "KV cache, event line",
        "short requests hold a run reserved for their whole length (□ unwritten); long ones are paged: "
        "only they are preempted.",
        "With --variant paged or contiguous: who is preempted, who waits?",
        "How would you optimize for different workload patterns?", "reserved; runs"),
    Lesson(
        "Priority and SLAs as a plugin", "priority_sla", "first:14",
        "Requests (pri, why not scheduled)",
        "urgent request 14 (pri 5) sampled a step after arriving; low-priority rows wait: 'budget "
        "reserved for priority'.",
        "Run with --without-plugin priority: how long do urgent ones wait now?",
        "How would you add prioritization (e.g., SLA-aware scheduling)?", "reserved for priority"),
    Lesson(
        "Cache hooks and compression", "mixed_load", "step:10",
        "event line, Memory",
        "the kv_int8 plugin's before_append hook quantises each K/V it writes; its note: the KV pool is "
        "about 4x smaller.",
        "What does compression cost in accuracy, and how would you measure it?",
        "How would you implement a custom cache optimization plugin?", "x smaller)", plugins=("kv_int8",)),
    Lesson(
        "Monitoring, memory and leaks", "mixed_load", "step:20",
        "Memory, metrics (m)",
        "process memory, weights and the KV pool; m opens TTFT and inter-token latency, throughput and "
        "the leak check.",
        "Which number would grow for ever if finished requests were never freed?",
        "How would you detect memory leaks in a continuous batching system?", "weights"),
    Lesson(
        "Scheduler correctness: invariants and isolation", "mixed_load", "finish:11",
        "header, Requests",
        "the last request finished: all 12 done, no step over budget, each output as if it ran alone.",
        "Which invariants would you assert after every step?",
        "How to validate scheduler correctness?", "request 11 finished"),
    Lesson(
        "Turn a knob while it runs", "live_budget", "change",
        "event line, Token budget, Requests",
        "at step 20 the budget doubled, 16 -> 32 ([[changes]] in the file, or --at): the queue drains, "
        "TTFT falls.",
        "With --at 20:max_tokens_per_step=16, what happens to TTFT?",
        "How would you implement adaptive batch sizing?", "max_tokens_per_step 16 -> 32"),
)


def lesson_line(number: int, lesson: Lesson) -> str:
    """One line of `cbtui lessons --list`."""
    return f"{number:>2}. {lesson.title} ({lesson.scenario})"
