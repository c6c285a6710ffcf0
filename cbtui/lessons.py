"""The lessons: a guided path through the seed's questions (docs: /work/shared/seed-qa.md), each
one a built-in scenario opened paused at the step that shows the point (a breakpoint), with what to
watch, the panel that shows it, and a question for the student.

Lessons are data: add one to LESSONS (speculative decoding and prefix caching will come after
'Recompute after preemption', with their scenarios). `look_for` is text that is on screen at the
lesson's step: tests/test_lessons.py opens every lesson and checks it there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lesson:
    title: str
    scenario: str  # a built-in scenario
    break_on: str  # a breakpoint spec (cbtui/breakpoints.py): where the lesson pauses
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
        "request 1 finishes and gives its KV blocks back; the others keep running, and two steps later "
        "request 8 is admitted into the same running batch.",
        "Why can a finished request leave at a token boundary, without waiting for the rest of its batch?",
        "What is continuous batching?", "request 1 finished"),
    Lesson(
        "Decodes first, then prefill chunks", "mixed_load", "step:6",
        "Token budget",
        "the bar: decode tokens (█, one per decoding request) are placed first; prefill chunks (▓) fill "
        "what is left of the 48 tokens.",
        "If ten more requests were decoding, how many prefill tokens would fit in this step?",
        "How does token budgeting work per step?", "decode demand"),
    Lesson(
        "The ragged mask: one batch, isolated requests", "mixed_load", "step:6",
        "Ragged mask",
        "rows are this step's query tokens, columns their keys. Each request lights only its own keys: a "
        "decode is one row that sees its whole history, a prefill chunk a causal triangle.",
        "Where would a lit cell appear if two requests could see each other's tokens?",
        "How to ensure requests are isolated in mixed batches? How is causality enforced?", "queries"),
    Lesson(
        "prefill_pos and the first token", "mixed_load", "first:2",
        "Requests (prompt, gen), event line",
        "request 2's 120-token prompt went in 16 tokens a step (prompt column); in the step its last chunk "
        "ran, it sampled its first token and became a decode.",
        "Why did request 2 take 7 steps to its first token while request 1 took none?",
        "How does the model transition from prefill to decode?", "request 2 sampled its first token"),
    Lesson(
        "Chunk size and time to first token", "long_prompt", "step:4",
        "Requests (why not scheduled)",
        "a 512-token prompt takes the whole budget in 64-token chunks; the short requests that arrived "
        "wait with 'token budget spent'.",
        "Run it again with --variant chunk_16: when do the short requests get their first token now?",
        "How does prefill chunk size affect latency?", "token budget spent"),
    Lesson(
        "Decode demand over the cap", "decode_heavy", "step:6",
        "Token budget (decode demand), event line",
        "12 requests want to decode but the cap is 8: 4 wait a step ('decode cap'), and the least recently "
        "served go first next step.",
        "Can a decode starve here? Step on (n) and follow one that waited.",
        "What happens if decode demand exceeds the token budget?", "decode cap 8 left 4 waiting"),
    Lesson(
        "Dense vs paged KV, and flatten", "dense_vs_paged", "step:12",
        "KV cache",
        "one cell per 16-token block from one shared pool; a request's blocks need not be neighbours. Select "
        "a request (↓) to see its block table.",
        "To attend, a request's blocks are read in table order and the last one's empty tail trimmed: how "
        "many slots are empty for the selected request? (--variant dense: no blocks)",
        "Dense vs. paged KV cache? How do you flatten paged KV for attention?", "block 16 tok"),
    Lesson(
        "KV pressure and preemption", "kv_pressure", "preempt:3",
        "event line, KV cache",
        "request 1 needs a block and none is free, so the newest running request (3) is preempted: its "
        "blocks are freed (× in the KV grid) and it goes back to the front of the queue.",
        "Why preempt the newest request rather than the oldest?",
        "What factors affect scalability of a continuous batching system?", "request 3 preempted"),
    Lesson(
        "Recompute after preemption", "kv_pressure", "recompute:3",
        "Requests (state, pre), event line",
        "request 3 is admitted again: its state says recompute and its pre column 1; it feeds its prompt "
        "and generated tokens again before it can sample.",
        "What did the preemption cost? Compare the steps with --variant roomy (a pool big enough).",
        "What factors affect scalability of a continuous batching system?", "recompute"),
    Lesson(
        "Static vs continuous batching", "static_vs_continuous", "step:5",
        "Token budget (padding slots), event line",
        "request 2 finished at step 3, yet its slot stays empty (padding) until the batch's longest member "
        "ends; the queue waits with 'static batch full'.",
        "How many slot-steps does this batch waste? Run --variant continuous and compare the steps.",
        "How do you measure the efficiency of continuous batching?", "padding"),
    Lesson(
        "Bursts and an adaptive budget", "burst_arrivals", "step:13",
        "header notes, Token budget title",
        "a burst arrives; the adaptive_batch plugin sizes the budget from the measured step time "
        "('budget 16 -> 64 (adaptive)').",
        "What should the budget do when a burst arrives, and what when the queue is empty?",
        "How would you implement adaptive batch sizing?", "(adaptive)", plugins=("adaptive_batch",)),
    Lesson(
        "Priority and SLAs as a plugin", "priority_sla", "first:14",
        "Requests (pri, why not scheduled), header notes",
        "urgent request 14 (priority 5) got its first token a step after arriving; low-priority rows "
        "wait with 'budget reserved for priority'.",
        "Run it with --without-plugin priority: how long do the urgent requests wait now?",
        "How would you add prioritization (e.g., SLA-aware scheduling)?", "reserved for priority"),
    Lesson(
        "Cache hooks and compression", "mixed_load", "step:10",
        "Memory (KV pool)",
        "the kv_int8 plugin's before_append hook quantises every K/V written: the KV pool takes a "
        "fraction of the bytes.",
        "What does compression cost? (cbtui scenario mixed_load --plugin kv_int8 --headless counts the "
        "tokens that differ)",
        "How would you implement a custom cache optimization plugin?", "KV pool", plugins=("kv_int8",)),
    Lesson(
        "Monitoring, memory and leaks", "mixed_load", "step:20",
        "Memory, and the metrics screen (m)",
        "the Memory panel: process memory, weights and the KV pool. Press m: TTFT and inter-token "
        "latency per request, throughput, and the memory profile's leak check.",
        "Which number would grow for ever if finished requests were never freed?",
        "How would you detect memory leaks in a continuous batching system?", "KV pool"),
    Lesson(
        "Scheduler correctness: invariants and isolation", "mixed_load", "finish:11",
        "header, Requests",
        "the last request finishes: every request finished, no step spent more than its budget, and each "
        "output equals that request run alone (tests/test_exactness.py).",
        "Which invariants would you assert after every step?",
        "How to validate scheduler correctness?", "request 11 finished"),
)


def lesson_line(number: int, lesson: Lesson) -> str:
    """One line of `cbtui lessons --list`."""
    return f"{number:>2}. {lesson.title} ({lesson.scenario})"
