"""llama.cpp on the same chat prompts, through llama-cpp-python, when it is installed.

It runs the model's GGUF file as it is (its own quantized weights and kernels), one request at a
time, as `Llama.generate` serves them: no batching, the previous prompt's common prefix kept in
its cache (as ours keeps shared prefix blocks). Greedy (temperature 0), prompts given as token
ids, so every system sees the same tokens. It runs in a process of its own (llama_cpp_worker.py):
a crash in its native code is a row saying so. Optional: the bench says why there is no row.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from engine.models.packaged import is_packaged, is_pulled, packaged_path

from .llama_cpp_worker import LlamaCppProcess
from .metrics import RunResult
from .workloads import Workload, warmup_workload

NAME = "llama.cpp, one at a time"
# A run's time limit: generous for the slowest CPU llama.cpp runs on, but bounded.
RUN_TIMEOUT_S, RUN_TIMEOUT_PER_TOKEN_S = 60.0, 0.1


def gguf_path(model: str) -> Path | None:
    """The GGUF file behind `model`: a pulled package's file, or the model when it is a .gguf path."""
    if is_packaged(model):
        return packaged_path(model) if is_pulled(model) else None
    path = Path(model).expanduser()
    return path if path.suffix.lower() == ".gguf" and path.is_file() else None


def llama_cpp_problem(model: str) -> str | None:
    """Why there can be no llama.cpp row for `model`, or None when there can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed: no llama.cpp row (pip install llama-cpp-python to add one)"
    if gguf_path(model) is None:
        return f"no llama.cpp row: model {model!r} is not a GGUF file (llama.cpp reads GGUF only)"
    return None


class LlamaCppSystem:
    """A system for run_systems: the GGUF loaded once in its process (not timed), a workload per call."""

    def __init__(self, model: str, threads: int, context: int):
        path = gguf_path(model)
        assert path is not None, "llama_cpp_problem(model) first"
        self.process = LlamaCppProcess(str(path), threads, context)
        self.note = f"{path.name} as is, {threads} threads, greedy, one request at a time"

    def __call__(self, workload: Workload) -> RunResult:
        tokens = workload.prompt_tokens + sum(workload.max_new_tokens)
        out = self.process.run(warmup_workload(workload.model).prompts[0], [list(p) for p in workload.prompts],
                               list(workload.max_new_tokens), workload.stop_ids,
                               RUN_TIMEOUT_S + RUN_TIMEOUT_PER_TOKEN_S * tokens)
        result = RunResult(NAME, note=self.note, prompt_tokens=workload.prompt_tokens, wall_s=out["wall_s"],
                           outputs=out["outputs"], ttft_s=out["ttft_s"], tpot_s=out["tpot_s"])
        result.output_tokens = sum(map(len, result.outputs))
        result.steps = result.output_tokens  # one token per llama_decode after each prompt
        return result

    def close(self) -> None:
        self.process.close()


def llama_cpp_rows(model: str, threads: int, context: int) -> tuple[list[tuple[str, Callable]], str,
                                                                      LlamaCppSystem | None]:
    """(the rows run_systems takes, the heading's line about llama.cpp, the system to close after):
    what ran, or why there is no row."""
    problem = llama_cpp_problem(model)
    if problem:
        return [], problem, None
    try:
        system = LlamaCppSystem(model, threads, context)
    except Exception as exc:  # a release or a file it cannot take: say so, run the rest
        return [], f"no llama.cpp row: {exc}"[:300], None
    return ([(NAME, system)], f"llama.cpp row: llama-cpp-python {system.process.version}, the GGUF file as is",
            system)
