"""Shared helpers for engine tests: run workloads batched (with plugins) and alone, and one prompt's logits."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import torch

from engine import Engine, EngineConfig
from engine.attention.layer_attention import PackedAttention
from engine.batch_builder import build_batch
from engine.cpu_kernels import build as build_cpu_kernels
from engine.kv.dense_store import DenseKVStore
from engine.records import ScheduledItem

_ALONE_CACHE: dict[tuple, list[int]] = {}
# What a CPU run's header adds for its decode kernel: nothing where it cannot be built (no compiler).
CPP_DECODE = " · cpp decode" if build_cpu_kernels() is None else ""


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


def run_batched(config: EngineConfig, workload: list[dict], plugins: list | None = None):
    """Runs every request of the workload together; returns (outputs by index, records, engine)."""
    eng = Engine(config, plugins=plugins)
    ids = [eng.add_request(**spec) for spec in workload]
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
        assert len(records) < 10_000, "engine did not finish"
    return [eng.requests[i].output for i in ids], records, eng


def run_plugins(plugins: list, workload: list[dict], **config) -> tuple[list[list[int]], list]:
    """The workload batched under exact_config(**config) with these plugins: (outputs, records)."""
    outputs, records, _ = run_batched(exact_config(**config), workload, plugins)
    return outputs, records


def our_logits(engine: Engine, tokens: list[int]) -> torch.Tensor:
    """Logits at every position of one prompt, from a single packed prefill."""
    n = len(tokens)
    batch = build_batch([ScheduledItem(0, "prefill", 0, n, n)], [tokens], [True], engine.runner.device)
    s = engine.runner.spec
    kv = DenseKVStore(s.num_layers, s.num_kv_heads, s.head_dim, engine.runner.dtype, engine.runner.device)
    kv.begin_step([0], batch)
    per_layer = [PackedAttention(engine.runner.attention)] * s.num_layers
    return engine.runner.model(batch.token_ids, batch.positions, torch.arange(n), kv, per_layer, batch)


def fuzz_examples(default: int) -> int:
    """Examples for the fuzz tests of files from outside: CI runs `default`; a long run by hand sets
    CBTUI_FUZZ_EXAMPLES (e.g. 5000)."""
    return int(os.environ.get("CBTUI_FUZZ_EXAMPLES", default))


def sharded_time_limit(seconds: int = 120) -> Iterator[None]:
    """A fixture's body: fails a sharded test that runs past `seconds` instead of hanging the suite."""
    def expire(signum, frame):
        raise TimeoutError(f"sharded test ran past {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def checkpoint_maker():
    """scripts/make_test_checkpoint.py as a module (make_checkpoint, train_tokenizer)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "make_test_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_test_checkpoint", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
