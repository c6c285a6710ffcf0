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
    # What the screen holds at the pause, so that what the text names is in sight at 80x24:
    select: int | None = None  # the request selected (its row scrolled into view, its cells marked)
    zoom: bool = False  # the mask shows the selected request's rows alone
    fold_table: bool = False  # on a small terminal the Requests table gives its rows to the panels
    # Phrases that the screen shows at the pause at 80x24 (tests/test_lesson_claims.py): the figures
    # and words the text quotes, so that it cannot drift from what the run shows.
    shows: tuple[str, ...] = ()


LESSONS: tuple[Lesson, ...] = (
    Lesson(
        "Requests join and leave the batch", "mixed_load", "finish",
        "event line, Requests",
        "request 1 finished and gave its KV blocks back; the rest run on, and request 8 joins the same "
        "batch two steps later.",
        "Why can a request leave without waiting for the rest of its batch?",
        "What is continuous batching?", "request 1 finished", select=1,
        shows=("request 1 finished after 12 tokens, 2 blocks freed", "× r1 freed 2", "finished")),
    Lesson(
        "Decodes first, then prefill chunks", "mixed_load", "step:6",
        "Token budget",
        "3 decodes (█) go first; prefill chunks (▓, 16 at most a request) take 36 of the 45 left; 9 "
        "unused: no one else has arrived.",
        "With ten more decodes, how many prefill tokens would fit in this step?",
        "How does token budgeting work per step?", "decode demand",
        shows=("48 tokens per step", "decode 3", "prefill 36", "unused 9")),
    Lesson(
        "The ragged mask: one batch, isolated requests", "mixed_load", "step:2",
        "Ragged mask",
        "each request sees only its own keys: request 1's decode is one row; the chunks of requests 0 "
        "and 2 are causal triangles.",
        "Where would a lit cell be if two requests could see each other?",
        "How to ensure requests are isolated in mixed batches? How is causality enforced?", "queries",
        fold_table=True, shows=("33 queries↓", "0p", "1d", "2p")),
    Lesson(
        "prefill_pos and the first token", "mixed_load", "first:2",
        "Requests, event line",
        "request 2's 120-token prompt went in 16 tokens a step; when its last chunk ran, it sampled its "
        "first token: now a decode.",
        "Why did request 2 need 7 steps to its first token, request 1 none?",
        "How does the model transition from prefill to decode?", "request 2 sampled its first token",
        shows=("request 2 sampled its first token (TTFT 7 steps)", "120/120")),
    Lesson(
        "Chunk size and time to first token", "long_prompt", "step:4",
        "Requests (why not scheduled)",
        "a 512-token prompt takes the whole 64-token budget each step; the short requests wait: 'token "
        "budget spent'.",
        "cbtui lesson 5 --variant chunk_16: when do the short ones start now?",
        "How does prefill chunk size affect latency?", "token budget spent",
        shows=("64 tokens per step", "prefill 64", "320/512", "token budget spent")),
    Lesson(
        "Decode demand over the cap", "decode_heavy", "step:6",
        "Token budget, event line",
        "12 requests want to decode, the cap is 8: 4 wait a step ('decode cap'); the least recently served "
        "go first next step.",
        "Can a decode starve here? Step on (n) and follow one that waited.",
        "What happens if decode demand exceeds the token budget?", "decode cap 8 left 4 waiting",
        shows=("decode demand 12 > cap 8: 4 wait", "decode cap 8 left 4 waiting")),
    Lesson(
        "Dense vs paged KV, and flatten", "dense_vs_paged", "step:12",
        "KV cache",
        "a cell per 16-token block, all from one shared pool; request 2's blocks (marked) are not "
        "neighbours: its block table orders them.",
        "Attention reads its blocks in order: how much of the last is empty?",
        "Dense vs. paged KV cache? How do you flatten paged KV for attention?", "block 16 tok", select=2,
        fold_table=True,
        shows=("used 16/48", "block 16 tok", "r2 flattened")),
    Lesson(
        "KV pressure and preemption", "kv_pressure", "preempt:3",
        "event line, KV cache",
        "request 1 needs a block and none is free: the newest running request (3) is preempted, its blocks "
        "freed (×), and requeued.",
        "Why preempt the newest request rather than the oldest?",
        "What factors affect scalability of a continuous batching system?", "request 3 preempted",
        shows=("request 3 preempted (request 1 needs 1 block, 0 free", "× r3 freed 5")),
    Lesson(
        "Recompute after preemption", "kv_pressure", "recompute:3",
        "Requests (state, pre)",
        "request 3 is admitted again: state 'recompute', pre 1; it feeds its prompt and generated tokens "
        "again.",
        "Preemption's cost? Compare the steps: cbtui lesson 9 --variant roomy",
        "What factors affect scalability of a continuous batching system?", "recompute",
        shows=("recomputes 34 tokens (27 prompt + 7 generated)", "recompute", "27/27")),
    Lesson(
        "Speculative decoding: more than one token a step", "speculative", "step:13",
        "Ragged mask, event line",
        "request 3 runs 1 + 4 rows: its token and 4 n-gram drafts; the target keeps 1 and rolls back 3 "
        "(grey ×).",
        "Why the same outputs? Compare: cbtui scenario speculative --headless",
        "How to support variable decode batch sizes?", "drafts accepted", select=3, zoom=True, fold_table=True,
        shows=("request 3: 1 of 4 drafts accepted", "5 queries↓")),
    Lesson(
        "Prefix caching: a shared prompt computed once", "shared_prefix", "reuse",
        "KV cache, event line",
        "request 1 starts after the system prompt's blocks: computed once, shared (② = 2 holders, ○ "
        "cached-free).",
        "Prefill tokens saved by caching? cbtui scenario shared_prefix --headless",
        "How would you implement a custom cache optimization plugin?", "from the prefix cache",
        shows=("request 1 reused 2 blocks (32 tokens)", "②2", "1p↺32")),
    Lesson(
        "KV sharded across devices", "sharded_kv", "step:6",
        "KV cache, Memory",
        "two processes hold the KV, a pool each: a request's blocks alternate; partial attentions merge "
        "by log-sum-exp.",
        "What changes with the heads split? cbtui lesson 12 --variant heads",
        "How would you shard KV across devices?", "shard 1", fold_table=True,
        shows=("shard 0 cpu 13/24 used", "shard 1 cpu 13/24 used", "⇄ sent", "shard 1 cpu RSS")),
    Lesson(
        "Static vs continuous batching", "static_vs_continuous", "step:5",
        "Token budget, event line",
        "request 2 finished at step 3, but its slot stays empty (padding) until the batch's longest "
        "member ends.",
        "Slot-steps wasted? Compare: cbtui lesson 13 --variant continuous",
        "How do you measure the efficiency of continuous batching?", "padding",
        shows=("padding 1 slots (finished)", "1 slot held by finished requests (padding)")),
    Lesson(
        "Throughput vs latency", "budget_sweep", "step:4",
        "Token budget, header",
        "32 tokens a step: a bigger budget, fewer and fuller steps, each slower. The ms need a GPU; on "
        "a CPU, noise.",
        "Steps, latency from 16 to 128? cbtui scenario budget_sweep --headless",
        "Throughput vs. latency trade-offs?", "32 tokens per step", shows=("32 tokens per step",)),
    Lesson(
        "Bursts and an adaptive budget", "burst_arrivals", "step:15",
        "header notes, budget title",
        "the queue grows the budget while a step (modelled: 2 ms + 0.25 ms a token) stays under 20 ms: "
        "'budget 16 -> 29'.",
        "What should the budget do in a burst, and when the queue is empty?",
        "How would you implement adaptive batch sizing?", "(adaptive",
        plugins=("adaptive_batch:ms_per_token=0.25,base_ms=2",),
        shows=("budget 16 -> 29 (adaptive", "29 tokens per step")),
    Lesson(
        "Cache layout by request length", "layout_by_length", "preempt",
        "KV cache, event line",
        "short requests hold a run reserved for their whole length (□ unwritten); long ones are paged: "
        "only they are preempted.",
        "With --variant paged or contiguous: who is preempted, who waits?",
        "How would you optimize for different workload patterns?", "reserved; runs",
        shows=("request 32 preempted", "□ runs")),
    Lesson(
        "Priority and SLAs as a plugin", "priority_sla", "first:14",
        "Requests (pri, why not scheduled)",
        "urgent request 14 (pri 5) sampled a step after arriving; low-priority rows wait: 'budget "
        "reserved for priority'.",
        "cbtui lesson 17 --variant no_priority: how long do urgent ones wait now?",
        "How would you add prioritization (e.g., SLA-aware scheduling)?", "reserved for priority", select=14,
        shows=("request 14 sampled its first token (TTFT 1 step)", "budget reserved for priority")),
    Lesson(
        "Cache hooks and compression", "mixed_load", "step:10",
        "event line, Memory",
        "the kv_int8 plugin's before_append hook quantises each K/V it writes; its note: the KV pool is "
        "about 4x smaller.",
        "What does compression cost in accuracy, and how would you measure it?",
        "How would you implement a custom cache optimization plugin?", "x smaller)", plugins=("kv_int8",),
        fold_table=True, shows=("3.9x smaller", "KV pool")),
    Lesson(
        "Monitoring, memory and leaks", "mixed_load", "step:20",
        "Memory, metrics (m)",
        "process memory, weights and the KV pool; m opens TTFT and inter-token latency, throughput and "
        "the leak check.",
        "Which number would grow for ever if finished requests were never freed?",
        "How would you detect memory leaks in a continuous batching system?", "weights", fold_table=True,
        shows=("KV pool", "weights", "RSS")),
    Lesson(
        "Scheduler correctness: invariants and isolation", "mixed_load", "finish:11",
        "header, Requests",
        "request 11 finished last: finished 12, none running or waiting. Tests check each step's budget "
        "and outputs against runs alone.",
        "Which invariants would you assert after every step?",
        "How to validate scheduler correctness?", "request 11 finished",
        shows=("finished 12", "running 0", "waiting 0", "request 11 finished")),
    Lesson(
        "Turn a knob while it runs", "live_budget", "change",
        "event line, Token budget, Requests",
        "at step 20 the budget doubled, 16 -> 32 ([[changes]], or --at): the 7 waiting are all in by "
        "step 32.",
        "With cbtui scenario live_budget --at 20:max_tokens_per_step=16, TTFT?",
        "How would you implement adaptive batch sizing?", "max_tokens_per_step 16 -> 32",
        shows=("max_tokens_per_step 16 -> 32", "32 tokens per step", "waiting 7")),
)


def lesson_line(number: int, lesson: Lesson) -> str:
    """One line of `cbtui lessons --list`."""
    return f"{number:>2}. {lesson.title} ({lesson.scenario})"
