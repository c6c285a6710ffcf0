"""Shared helpers for engine tests: run workloads batched and alone."""

from __future__ import annotations

import os

from engine import Engine, EngineConfig

_ALONE_CACHE: dict[tuple, list[int]] = {}


def exact_config(**kw) -> EngineConfig:
    """float64 on the CPU: reduction order cannot flip a greedy choice between near-tied logits."""
    base = dict(model="tiny", device="cpu", dtype="float64", seed=0)
    base.update(kw)
    return EngineConfig(**base)


def run_alone(prompt: list[int], max_new_tokens: int) -> list[int]:
    """The request by itself, with a roomy budget and the reference backend."""
    key = (tuple(prompt), max_new_tokens)
    if key not in _ALONE_CACHE:
        eng = Engine(exact_config(attention="reference", kv_layout="dense", max_tokens_per_step=4096,
                                  prefill_chunk_size=4096))
        rid = eng.add_request(prompt, max_new_tokens=max_new_tokens)
        _ALONE_CACHE[key] = eng.run_until_done()[rid]
    return _ALONE_CACHE[key]


def run_batched(config: EngineConfig, workload: list[dict]):
    """Runs every request of the workload together; returns (outputs by index, records)."""
    eng = Engine(config)
    ids = [eng.add_request(**spec) for spec in workload]
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
        assert len(records) < 10_000, "engine did not finish"
    return [eng.requests[i].output for i in ids], records, eng


def fuzz_examples(default: int) -> int:
    """Examples for the fuzz tests of files from outside: CI runs `default`; a long run by hand sets
    CBTUI_FUZZ_EXAMPLES (e.g. 5000)."""
    return int(os.environ.get("CBTUI_FUZZ_EXAMPLES", default))
