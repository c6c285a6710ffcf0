"""How much arithmetic a run is, and how fast this machine's matmul does the model's shapes.

A run's flops are counted from the model's shapes, not measured: each fed token goes through
every layer's projections (2 flops per weight) and attends to the keys before it (QK and PV:
4 x heads x head_dim per key); each sampled token goes through the output head. The matmul speed
is torch's own linear on the same shapes and rows (every layer's weights), in the same process and threads, so the
ratio of the two says how close a run gets to what the machine does with its weights. Where the
engine packs bf16 weights for oneDNN (engine/runner/packed_linear.py), the packed linear is timed
too and the faster of the two counts: the yardstick is the machine's best, not the engine's own path.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch

from engine.models.llama import ModelSpec
from engine.runner.packed_linear import pack_linear_weights, packing_problem


def layer_shapes(spec: ModelSpec) -> list[tuple[int, int]]:
    """(in, out) of one layer's projections, fused as our model runs them."""
    d, h, kvh, hidden, inter = spec.head_dim, spec.num_heads, spec.num_kv_heads, spec.hidden_size, \
        spec.intermediate_size
    return [(hidden, (h + 2 * kvh) * d), (h * d, hidden), (hidden, 2 * inter), (inter, hidden)]


def layer_weights(spec: ModelSpec) -> int:
    return sum(i * o for i, o in layer_shapes(spec))


def run_flops(spec: ModelSpec, prompts: list[list[int]], new_tokens: list[int]) -> dict:
    """Flops of running each prompt and generating its new tokens (the last token is sampled,
    never fed), split into prefill (the prompts, and each first token's output head) and decode
    (every later token): {"prefill", "decode", "total", "prefill_rows", "decode_rows"}."""
    per_token = 2 * layer_weights(spec) * spec.num_layers
    per_key = 4 * spec.num_heads * spec.head_dim * spec.num_layers
    head = 2 * spec.hidden_size * spec.vocab_size
    prefill = decode = 0
    for prompt, new in zip(prompts, new_tokens, strict=True):
        p, fed = len(prompt), len(prompt) + new - 1
        keys_prefill = p * (p + 1) // 2  # the token at position i sees i + 1 keys
        prefill += per_token * p + per_key * keys_prefill + head
        decode += per_token * (fed - p) + per_key * (fed * (fed + 1) // 2 - keys_prefill) + head * (new - 1)
    return {"prefill": prefill, "decode": decode, "total": prefill + decode,
            "prefill_rows": sum(map(len, prompts)), "decode_rows": sum(new_tokens) - len(prompts)}


def matmul_speed(spec: ModelSpec, rows: int, dtype: str, repeats: int = 3) -> dict:
    """GFLOP/s of torch's linear over every layer's projections and the output head, at `rows`
    rows (a decode step of that many requests), in `dtype`: the median of `repeats` timings, each
    after a warm-up pass; with packed weights too where they can be (the faster counts). Every
    layer has its own copy of the weights, as the model does, so the weights stream from memory as
    a forward pass streams them (one layer's alone would stay in the CPU's cache and overstate the
    speed)."""
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    layer = [torch.randn(o, i, generator=gen).to(dt) for i, o in layer_shapes(spec)]
    weights = [w.clone() for _ in range(spec.num_layers) for w in layer]
    weights.append(torch.randn(spec.vocab_size, spec.hidden_size, generator=gen).to(dt))
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], generator=gen).to(dt) for w in weights}
    flops = sum(2 * rows * w.numel() for w in weights)
    linears: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {
        "plain": [functools.partial(torch.nn.functional.linear, weight=w) for w in weights]}
    if packing_problem(torch.device("cpu"), dt) is None:
        linears["packed"] = []
        for w in weights:
            layer_module = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=dt)
            layer_module.weight.data = w
            pack_linear_weights(layer_module)
            linears["packed"].append(layer_module)
    speeds = {}
    with torch.no_grad():
        for name, fns in linears.items():
            times = []
            for rep in range(repeats + 1):
                t = time.perf_counter()
                for w, fn in zip(weights, fns, strict=True):
                    fn(inputs[w.shape[1]])
                if rep:  # the first pass warms up
                    times.append(time.perf_counter() - t)
            speeds[name] = flops / statistics.median(times) / 1e9
    best = max(speeds, key=speeds.__getitem__)
    return {"rows": rows, "dtype": dtype, "gflop_s": speeds[best], "linear": best}
