"""Micro-benchmark: decode attention from the paged pool on the CPU, padded vs grouped by width.

    python scripts/bench_cpu_decode.py [--decodes 32 256] [--repeats 15] [--threads 1]

One layer of the `small` preset (14 query heads, 2 kv heads of 64; --model tiny: 4 and 2 of 16),
float32, blocks of 16, key lengths uniform in 32..1024 like the bench's anchor workload, tables
scattered over a pool as large as the anchor run's. The two ways run interleaved in one process;
figures are medians of the
repeats. The grouping plan is made once per step (every layer reuses it): its time is shown apart,
and also spread over 24 layers in the per-step ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from engine.attention.paged_decode import (
    GROUP_COST,
    grouped_decode_attention,
    paged_decode_attention,
    plan_decode_groups,
)
from engine.models.llama import PRESETS

BLOCK = 16


def case(n: int, seed: int, dtype: torch.dtype, pool_blocks: int, spec):
    rng = random.Random(seed)
    lens = [rng.randint(32, 1024) for _ in range(n)]
    need = sum(-(-length // BLOCK) for length in lens)
    ids = rng.sample(range(max(pool_blocks, need)), need)
    tables, at = [], 0
    for length in lens:
        w = -(-length // BLOCK)
        tables.append(ids[at:at + w])
        at += w
    width = max(map(len, tables))
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    head_dim = spec.hidden_size // spec.num_heads
    k_pool = torch.randn(max(pool_blocks, need) * BLOCK, spec.num_kv_heads, head_dim, dtype=dtype)
    v_pool = torch.randn_like(k_pool)
    q = torch.randn(n, spec.num_heads, head_dim, dtype=dtype)
    return q, k_pool, v_pool, padded, lens


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds): on a shared machine the second is the steadier."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def median(samples: list[tuple[float, float]], which: int) -> float:
    return statistics.median(s[which] for s in samples)


def measure(n: int, repeats: int, dtype: torch.dtype, pool_blocks: int, group_cost: int, spec) -> None:
    q, k_pool, v_pool, tables, lens = case(n, n, dtype, pool_blocks, spec)
    key_lens = torch.tensor(lens)
    key_bytes = 2 * k_pool[0].numel() * k_pool.element_size()
    padding = 1 - sum(lens) / (n * tables.shape[1] * BLOCK)
    plan = plan_decode_groups(tables, lens, BLOCK, key_bytes, group_cost=group_cost)
    old, new, plans = [], [], []
    for _ in range(repeats):  # interleaved, so drift in the machine's load hits both alike
        old.append(timed(lambda: paged_decode_attention(q, k_pool, v_pool, tables, key_lens, BLOCK)))
        plans.append(timed(lambda: plan_decode_groups(tables, lens, BLOCK, key_bytes, group_cost=group_cost)))
        new.append(timed(lambda: grouped_decode_attention(q, k_pool, v_pool, plan, BLOCK) if plan
                         else paged_decode_attention(q, k_pool, v_pool, tables, key_lens, BLOCK)))
    print(f"{n} decodes, {padding:.0%} of the padded path's keys are padding, {len(plan.groups) if plan else 1} groups")
    for which, name in ((0, "wall"), (1, "cpu ")):
        o, w, p = median(old, which), median(new, which), median(plans, which)
        step = (o * spec.num_layers) / (w * spec.num_layers + p)
        print(f"  {name}: padded {o * 1e3:7.2f} ms/layer, grouped {w * 1e3:7.2f} ms/layer + plan {p * 1e3:.2f} "
              f"ms/step; padded/grouped {o / w:.2f} per layer, {step:.2f} per {spec.num_layers}-layer step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decodes", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pool-blocks", type=int, default=40_000, help="pool size (blocks of 16 tokens)")
    ap.add_argument("--model", choices=sorted(PRESETS), default="small", help="the preset's head shapes and layers")
    ap.add_argument("--group-cost", type=int, nargs="+", default=[GROUP_COST],
                    help="bytes a group costs (paged_decode.GROUP_COST); 0: one width per group")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"{args.model}: torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.dtype}, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for n in args.decodes:
        for cost in args.group_cost:
            print(f"group cost {cost:,} bytes: ", end="")
            measure(n, args.repeats, dtype, args.pool_blocks, cost, PRESETS[args.model])

if __name__ == "__main__":
    main()
