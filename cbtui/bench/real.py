"""`cbtui bench real`: a real model's chat prompts through ours and transformers, on this machine.

The same chat questions (chat_questions.py, wrapped in the model's chat template) at each request
count, greedy, exactly max_new_tokens each; every system repeated in rotating order in this
process (run.run_systems), torch threads pinned, the load average quoted at the start and the end.
Beside the throughput: the floating-point work the run did (flops.py) over its wall time, against
the machine's own matmul speed on the model's layer shapes, measured in the same run, as a ratio.
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

from engine.models.source import eos_token_ids, is_preset, model_spec, tokenizer_for
from engine.runner.cpu_dtype import bf16_flags

from .chat_questions import CHAT_QUESTIONS
from .flops import matmul_speed, run_flops
from .llama_cpp_system import llama_cpp_rows
from .run import CPU_BUDGET, run_systems
from .workloads import Workload

DEFAULT_MODEL = "smollm2"
DEFAULT_REQUESTS = (16, 64)
DEFAULT_NEW_TOKENS = 64
# transformers' generate_batch on the CPU: pages small enough for short chats, a budget like ours.
CPU_GENERATE_BATCH = {"page_size": 32, "max_batch_tokens": 2048}
GENERATE_BATCH_MAX = 16  # request counts above this skip generate_batch unless asked (its time)


def chat_workload(model: str, requests: int, max_new_tokens: int, stop_at_eos: bool = False) -> Workload:
    """`requests` chat prompts: the questions in order (repeated past the list's end), each in the
    model's chat template; a preset has none, so its prompts are the questions' bytes. stop_at_eos:
    each request ends at the model's end of sequence (at most max_new_tokens), as a chat client's
    does; otherwise every request generates exactly max_new_tokens."""
    tokenizer = tokenizer_for(model)
    questions = [CHAT_QUESTIONS[i % len(CHAT_QUESTIONS)] for i in range(requests)]
    if is_preset(model):
        prompts = [tokenizer.encode(q) for q in questions]
    else:
        prompts = [tokenizer.chat_prompt(q) for q in questions]  # type: ignore[union-attr]
    spec = model_spec(model)
    if max(map(len, prompts)) + max_new_tokens > spec.max_context:
        raise ValueError(f"max_new_tokens={max_new_tokens}: model {spec.name!r} holds {spec.max_context} tokens "
                         f"of context; use fewer new tokens")
    stop_ids = tuple(eos_token_ids(model)) if stop_at_eos else ()
    if stop_at_eos and not stop_ids:
        raise ValueError(f"model {spec.name!r} names no end-of-sequence token; run without --stop-at-eos")
    return Workload("chat", model, prompts, [max_new_tokens] * requests, 1.0, requests, 0, stop_ids=stop_ids)


def pin_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only before the first inter-op work of the process
        torch.set_num_interop_threads(1)


def run_real(model: str = DEFAULT_MODEL, requests: tuple[int, ...] = DEFAULT_REQUESTS,
             max_new_tokens: int = DEFAULT_NEW_TOKENS, repeat: int = 3, dtype: str = "float32",
             threads: int | None = None, hf: bool = True, generate_batch: bool = True,
             compare_dtype: str | None = None, generate_batch_all: bool = False, stop_at_eos: bool = False,
             llama_cpp: bool = True, gather_decode: bool = False, progress=lambda msg: None) -> dict:
    """Every request count in turn, each a run_systems report with the run's flops and the
    matmul speed beside it. compare_dtype: a row of ours continuous in that dtype too (its 'same
    out' says how many requests keep ours' greedy tokens). llama_cpp: a llama.cpp row where
    llama-cpp-python is installed and the model is a GGUF file. gather_decode: a row of ours
    continuous whose decodes take the block gather instead of the decode kernel (what the kernel is
    worth, measured in the same run)."""
    threads = threads or len(os.sched_getaffinity(0))
    spec = model_spec(model)
    longest = chat_workload(model, max(requests), max_new_tokens, stop_at_eos)
    load_start = os.getloadavg()
    start = time.time()
    others, llama_note, llama = (llama_cpp_rows(model, threads, max(map(len, longest.prompts)) + max_new_tokens)
                                 if llama_cpp else ([], "no llama.cpp row (--no-llama-cpp)", None))
    before = torch.get_num_threads()
    pin_threads(threads)
    sizes = []
    try:
        for n in requests:
            workload = chat_workload(model, n, max_new_tokens, stop_at_eos)
            rows = [(f"ours continuous, {compare_dtype}", {"dtype": compare_dtype})] if compare_dtype else []
            if gather_decode:
                rows.append(("ours continuous, gather decode", {"decode_attention": "gather"}))
            prefill_rows = min(sum(map(len, workload.prompts)), CPU_BUDGET)
            progress(f"{n} requests: matmul of the model's shapes ({dtype}, {n} and {prefill_rows} rows)")
            speed_before = [matmul_speed(spec, rows, dtype) for rows in (n, prefill_rows)]
            skipped = None
            if not generate_batch:
                skipped = "skipped (--no-generate-batch)"
            elif n > GENERATE_BATCH_MAX and not generate_batch_all:
                skipped = (f"skipped above {GENERATE_BATCH_MAX} requests: on the 2-core CPU it ran 16 chat requests "
                           f"in ~24 s, over twice padded generate; --generate-batch-all runs it")
            settings = dict(CPU_GENERATE_BATCH, num_blocks=n * -(-(max(map(len, workload.prompts)) + max_new_tokens)
                                                                 // CPU_GENERATE_BATCH["page_size"]))
            report = run_systems(workload, device="cpu", hf=hf, progress=progress, ablations=rows, repeat=repeat,
                                 dtype=dtype, generate_batch_settings=settings, generate_batch_skipped=skipped,
                                 other_systems=others)
            speed_after = [matmul_speed(spec, rows, dtype) for rows in (n, prefill_rows)]
            # The run's arithmetic, counted from its lengths: known beforehand only when they are fixed.
            flops = None if stop_at_eos else run_flops(spec, workload.prompts, workload.max_new_tokens)
            sizes.append({"requests": n, "report": report, "flops": flops,
                          "matmul": {"before": speed_before, "after": speed_after}})
    finally:
        torch.set_num_threads(before)
        if llama is not None:
            llama.close()
    return {"model": model, "dtype": dtype, "threads": threads, "repeat": repeat, "max_new_tokens": max_new_tokens,
            "stop_at_eos": stop_at_eos,
            "load_start": list(load_start), "load_end": list(os.getloadavg()), "seconds": time.time() - start,
            "bf16_cpu": bf16_flags(), "llama_cpp": llama_note, "sizes": sizes}


def machine_share(size: dict, system: str = "ours continuous") -> dict | None:
    """The run's flops over its wall time (the median run), and that as a share of what the
    machine's matmul does: the time the flops take at the measured matmul speeds (decode rows at
    the decode speed, prefill rows at the prefill speed; the faster of the two measurements, before
    and after the systems ran) over the run's wall time."""
    row = next((s for s in size["report"]["systems"] if s["system"] == system and s["available"]), None)
    if row is None or size["flops"] is None:
        return None
    flops = size["flops"]
    decode_speed, prefill_speed = (max(m[i]["gflop_s"] for m in size["matmul"].values()) for i in (0, 1))
    ideal_s = (flops["decode"] / decode_speed + flops["prefill"] / prefill_speed) / 1e9
    wall = row["wall_s"]
    return {"gflop": flops["total"] / 1e9, "wall_s": wall, "achieved_gflop_s": flops["total"] / wall / 1e9,
            "matmul_gflop_s": flops["total"] / ideal_s / 1e9, "decode_matmul_gflop_s": decode_speed,
            "prefill_matmul_gflop_s": prefill_speed, "share": ideal_s / wall}
