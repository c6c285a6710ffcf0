"""Hugging Face transformers on the same workload and weights: `generate_batch` and padded `generate`."""

from __future__ import annotations

import time
from typing import Any

import torch

from .metrics import RunResult
from .workloads import Workload, warmup_workload

CB_NAME = "HF generate_batch"
STATIC_NAME = "HF static generate"

# The settings that gave generate_batch its best figure in the H200 measurement.
CB_SETTINGS = {"page_size": 256, "num_blocks": 2048, "max_batch_tokens": 8192}


def transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stamps:
    """A stopping criterion that never stops: it stamps the time each new token is produced."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _until_stop(tokens: list[int], stop_ids: tuple[int, ...]) -> list[int]:
    """A row's tokens up to and including its first stop id (ours keeps the stop token too)."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i + 1]
    return tokens


def _static_batches(hf, workload: Workload, device: torch.device, result: RunResult | None, start: float):
    from transformers import StoppingCriteriaList

    size = workload.static_batch_size
    steps = 0
    for lo in range(0, workload.num_requests, size):
        prompts = workload.prompts[lo:lo + size]
        news = workload.max_new_tokens[lo:lo + size]
        width = max(map(len, prompts))
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        stamps = _Stamps()
        # Fixed lengths: no end of sequence, every row to its batch's longest. Stopping at end of
        # sequence: a finished row is padded while the batch runs on to its last row's end.
        lengths = {"eos_token_id": list(workload.stop_ids)} if workload.stop_ids else \
            {"eos_token_id": None, "min_new_tokens": max(news)}
        out = hf.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max(news), do_sample=False,
                          pad_token_id=0, stopping_criteria=StoppingCriteriaList([stamps]), **lengths)
        steps += out.shape[1] - width
        if result is None:
            continue
        gen = out[:, width:].tolist()
        for row, n in enumerate(news):
            tokens = _until_stop(gen[row][:n], workload.stop_ids)
            made = len(tokens)
            result.outputs.append(tokens)
            result.output_tokens += made
            first, last = stamps.times[0], stamps.times[made - 1]
            result.ttft_s.append(first - start)
            if made > 1:
                result.tpot_s.append((last - first) / (made - 1))
    return steps


@torch.no_grad()
def run_hf_static(hf, workload: Workload) -> RunResult:
    """Padded static batching with `generate`: batches in arrival order, each run to its longest output.

    Only each request's own max_new_tokens count as output; the rest of the batch's steps are waste.
    """
    device = hf.device
    _static_batches(hf, warmup_workload(workload.model), device, None, 0.0)
    _sync(device)
    result = RunResult(STATIC_NAME, note=f"{hf.config._attn_implementation} attention, left-padded batches "
                                         f"of {workload.static_batch_size}",
                       prompt_tokens=workload.prompt_tokens)
    start = time.perf_counter()
    result.steps = _static_batches(hf, workload, device, result, start)
    _sync(device)
    result.wall_s = time.perf_counter() - start
    return result


def _cb_config(settings: dict):
    from transformers import ContinuousBatchingConfig

    try:
        return ContinuousBatchingConfig(**settings)
    except TypeError:  # releases before page_size was named so
        settings = dict(settings)
        settings["block_size"] = settings.pop("page_size")
        return ContinuousBatchingConfig(**settings)


def _generation_config(max_new_tokens: int):
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)


@torch.no_grad()
def run_hf_generate_batch(hf, workload: Workload) -> RunResult:
    """Hugging Face's continuous batching. Needs CUDA: it sizes its paged cache from free GPU memory.

    Timed from the first request's creation to the last one's end, so the manager's own warm-up
    (CUDA graph capture, which it runs before requests are added) is not counted.
    """
    if hf.device.type != "cuda":
        return RunResult(CB_NAME, available=False,
                         note="CUDA only: transformers sizes its paged KV cache from GPU memory and refuses on the CPU")
    return generate_batch(hf, workload, CB_SETTINGS)


def generate_batch(hf, workload: Workload, settings: dict) -> RunResult:
    """generate_batch on any device that transformers agrees to size a cache on (tests run it on
    the CPU with its memory probe replaced). One output length: one generate_batch call; several:
    the manager, a request each. The note names the attention transformers ran with: its batching
    may switch to another implementation (e.g. flash attention, where installed) on its own."""
    if workload.stop_ids:
        return RunResult(CB_NAME, available=False, note="run with fixed lengths only (end of sequence ignored)")
    result = _generate_batch(hf, workload, settings)
    used = getattr(hf.config, "_attn_implementation", None)
    if used:
        result.note += f", attention {used}"
    return result


def _generate_batch(hf, workload: Workload, settings: dict) -> RunResult:
    # No separate warm-up call: the manager warms up (graph capture) before requests are added,
    # and the timing starts at the first request's creation; our engines already initialised CUDA.
    by_len = sorted(set(workload.max_new_tokens))
    if len(by_len) != 1:
        return _run_hf_manager(hf, workload, settings)
    kwargs = dict(generation_config=_generation_config(by_len[0]), continuous_batching_config=_cb_config(settings),
                  progress_bar=False)
    start = time.perf_counter()
    try:
        outs = hf.generate_batch(workload.prompts, record_timestamps=True, **kwargs)
    except TypeError:  # a release without per-token timestamps
        start = time.perf_counter()
        outs = hf.generate_batch(workload.prompts, **kwargs)
    _sync(hf.device)
    end = time.perf_counter()
    if len(outs) != workload.num_requests:
        raise RuntimeError(f"generate_batch returned {len(outs)} of {workload.num_requests} requests")
    return _cb_result(workload, list(outs.values()), start, end, settings)


def _run_hf_manager(hf, workload: Workload, settings: dict) -> RunResult:
    """Per-request output lengths: the manager that generate_batch uses, one add_request each."""
    gen_config = _generation_config(max(workload.max_new_tokens))
    with hf.continuous_batching_context_manager(generation_config=gen_config,
                                                continuous_batching_config=_cb_config(settings)) as manager:
        start = time.perf_counter()
        ids = [manager.add_request(p, max_new_tokens=n, record_timestamps=True)
               for p, n in zip(workload.prompts, workload.max_new_tokens, strict=True)]
        results: dict[str, Any] = {}  # request id -> its GenerationOutput
        while len(results) < len(ids):
            out = manager.get_result(timeout=1)
            if out is not None and out.is_finished():
                results[out.request_id] = out
            elif out is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching loop stopped early")
    return _cb_result(workload, [results[i] for i in ids], start, time.perf_counter(), settings)


def _cb_result(workload: Workload, outs: list, start: float, end: float, settings: dict = CB_SETTINGS) -> RunResult:
    result = RunResult(CB_NAME, note=", ".join(f"{k} {v}" for k, v in settings.items()),
                       prompt_tokens=workload.prompt_tokens)
    # created_time is stamped by add_request, after the manager's warm-up: that is the start.
    created = [c for o in outs if (c := getattr(o, "created_time", None)) is not None]
    ends = [getattr(o, "lifespan", (-1, -1))[1] for o in outs]
    stamped = len(created) == len(outs) and all(start <= c <= end for c in created)
    if stamped and all(start <= e <= end for e in ends):
        begin, finish = min(created), max(ends)
    else:  # no usable request timestamps in this release: the whole call, warm-up included
        begin, finish = start, end
        result.note += "; timed with its warm-up (no request timestamps)"
    result.wall_s = finish - begin
    for o in outs:
        if getattr(o, "error", None):
            raise RuntimeError(f"transformers request {o.request_id} failed: {o.error}")
        toks = list(o.generated_tokens)
        result.outputs.append(toks)
        result.output_tokens += len(toks)
        stamps = getattr(o, "timestamps", None) or []
        if stamps:
            result.ttft_s.append(stamps[0] - begin)
            if len(stamps) > 1:
                result.tpot_s.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    return result
