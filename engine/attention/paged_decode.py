"""Decode attention straight from the paged KV pool: one gather of whole blocks per layer.

The packed path reads every key of every item into a contiguous tensor, then the decode
attention pads them again: the whole history crosses memory twice per layer. Here each decode
gathers its own blocks from the pool through its block table ([n, blocks] indices into a
[num_blocks, block_size, kv_heads, d] view), masked by key length, and
scaled_dot_product_attention serves the decodes (query heads of a group stand in the query axis,
as in single.py).

Two ways to lay the decodes out:
- `paged_decode_attention`: every decode padded to the longest table, one sdpa call. Fixed
  widths, one kernel per op: what CUDA and the decode graphs want.
- `grouped_decode_attention` (the CPU): decodes sorted by table width and grouped, each group
  gathered only as wide as its widest table, in chunks small enough to stay in the CPU cache, one
  sdpa per group. With key lengths uniform in 32..1024 about half the padded path's keys are
  padding, and a gather of several MB runs out of cache before sdpa reads it back (3-5x slower per
  key on the 2-core test machine). Neighbouring widths share a group when that saves more than the
  padding costs (GROUP_COST). With group_cost=0 every group has one width, and a decode's output
  is bit for bit what it is when the decode runs alone; merged, it is the padded path's output at
  its group's width (other sdpa block lengths than the step's longest table: equal to rounding).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .single import padded_decode_sdpa

# Keys (of one layer, all kv heads, K and V) one group may gather on the CPU: 4 MiB at float32,
# 2 kv heads of 64, which stays in a 2 MiB-per-core L2 plus the L3 share a busy core gets.
GROUP_BYTES = 4 << 20
# What one more group costs (index_selects, an sdpa call, their thread barriers), as bytes gathered:
# the `tiny` model's decode steps ran 1.3-1.5x quicker at 1 MiB than with one width per group (one
# thread), and a 2-thread run on a busy machine pays for every op's barrier. 0: one width per group.
GROUP_COST = 1 << 20


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                           key_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """q [n, heads, d] (one query per item); pools [slots, kv_heads, d]; tables [n, blocks] (entries
    past an item's own blocks may be anything in range); key_lens [n]. Returns [n, heads, d]."""
    n = q.shape[0]
    kk, vv = _gather_blocks(k_pool, v_pool, tables.reshape(-1), n, block_size)
    valid = torch.arange(kk.shape[2], device=q.device)[None, :] < key_lens[:, None]  # [n, width]
    return padded_decode_sdpa(q, kk, vv, valid)


def _gather_blocks(k_pool: torch.Tensor, v_pool: torch.Tensor, blocks: torch.Tensor, n: int,
                   block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks (n rows' worth, flattened) of both pools: [n, kv_heads, width, d] each.

    index_select on the flattened table, not pool[tables]: the same blocks, about 3x quicker on the
    CPU (whole rows copied at once rather than element by element); one kernel on CUDA either way."""
    kv_heads, d = k_pool.shape[1:]
    width = blocks.numel() // n * block_size
    kk = k_pool.view(-1, block_size, kv_heads, d).index_select(0, blocks).view(n, width, kv_heads, d).transpose(1, 2)
    vv = v_pool.view(-1, block_size, kv_heads, d).index_select(0, blocks).view(n, width, kv_heads, d).transpose(1, 2)
    return kk, vv


@dataclass(frozen=True)
class DecodeGroup:
    rows: int  # how many decodes (the next ones in the plan's order)
    width: int  # their table width, in blocks
    valid: torch.Tensor  # [rows, width * block_size] False past each decode's key length


@dataclass(frozen=True)
class GatherChunk:
    """Groups gathered together (one index_select per pool), at most the byte budget unless one
    group alone is larger."""

    blocks: torch.Tensor  # the groups' tables, cut to each group's width, flattened one after another
    groups: list[DecodeGroup]


@dataclass(frozen=True)
class DecodeGroups:
    """One step's decodes grouped by table width: built once per step, used by every layer."""

    perm: torch.Tensor | None  # [n] the decodes in plan order (None: already in it)
    order: torch.Tensor | None  # [n] where each decode's output row is in plan order (perm's inverse)
    chunks: list[GatherChunk]

    @property
    def groups(self) -> list[DecodeGroup]:
        return [g for chunk in self.chunks for g in chunk.groups]


def plan_decode_groups(tables: torch.Tensor, key_lens: list[int], block_size: int, key_bytes: int,
                       group_bytes: int = GROUP_BYTES, group_cost: int = GROUP_COST) -> DecodeGroups | None:
    """Groups decodes by table width (blocks for their key length), packed into chunks of at most
    group_bytes of gathered keys and values (key_bytes per key position, both pools, all kv heads);
    a group larger than that is cut, down to one decode. Neighbouring widths share a group (the
    wider one's) when the padding costs fewer bytes than group_cost, a group's fixed cost in bytes
    gathered; group_cost 0: one width per group. tables [n, >= widest] on the device, key_lens on
    the host. None when one group of the widest width, within the budget, would do: that is the
    padded path's call (paged_decode_attention), no plan needed."""
    widths = [-(-length // block_size) for length in key_lens]
    by_width = sorted(range(len(key_lens)), key=widths.__getitem__)
    group_width = _merged_widths(sorted(widths), block_size * key_bytes, group_bytes, group_cost)
    if group_width[0] == group_width[-1] and len(widths) * group_width[0] * block_size * key_bytes <= group_bytes:
        return None
    chunks: list[list[tuple[int, int]]] = [[]]  # [start, stop) spans of by_width, one width each
    start, used = 0, 0
    for i in range(1, len(by_width) + 1):
        row_bytes = group_width[start] * block_size * key_bytes
        if i < len(by_width) and group_width[i] == group_width[start] and (i + 1 - start) * row_bytes <= group_bytes:
            continue
        size = (i - start) * row_bytes
        if chunks[-1] and used + size > group_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append((start, i))
        used += size
        start = i
    device = tables.device
    identity = by_width == list(range(len(by_width)))
    perm = torch.tensor(by_width, dtype=torch.long, device=device)
    widest = group_width[-1]
    ordered = (tables if identity else tables.index_select(0, perm))[:, :widest]
    meta = torch.tensor([group_width, [key_lens[i] for i in by_width]], dtype=torch.long, device=device)
    # every row's first group-width table entries, one row after another: each chunk's blocks, in order
    blocks = ordered[torch.arange(widest, device=device)[None, :] < meta[0][:, None]]
    valid = torch.arange(widest * block_size, device=device)[None, :] < meta[1][:, None]  # [n, widest keys]
    plan, at = [], 0
    for spans in chunks:
        groups = [DecodeGroup(b - a, group_width[a], valid[a:b, :group_width[a] * block_size]) for a, b in spans]
        size = sum(g.rows * g.width for g in groups)
        plan.append(GatherChunk(blocks[at:at + size], groups))
        at += size
    return DecodeGroups(None if identity else perm, None if identity else torch.argsort(perm), plan)


def _merged_widths(widths: list[int], block_bytes: int, group_bytes: int, group_cost: int) -> list[int]:
    """The width each decode (widths sorted) is gathered at: its own, or a wider neighbour's when
    sharing that group saves more group costs than the padding costs (dynamic programming over
    the distinct widths, fewest bytes plus group costs)."""
    runs = [(w, len(list(same))) for w, same in itertools.groupby(widths)]
    distinct, counts = [w for w, _ in runs], [c for _, c in runs]
    best = [0.0] + [float("inf")] * len(distinct)  # best[j]: cost of the first j distinct widths
    cut = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        rows = 0
        for i in range(j, 0, -1):  # group = distinct widths i-1 .. j-1, gathered at width distinct[j-1]
            rows += counts[i - 1]
            size = rows * distinct[j - 1] * block_bytes
            cost = best[i - 1] + size + group_cost * max(1, -(-size // group_bytes))
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
            if size > group_bytes:  # cut into chunks anyway: wider merges only add padding
                break
    out: list[int] = []
    j = len(distinct)
    while j:
        out = [distinct[j - 1]] * sum(counts[cut[j]:j]) + out
        j = cut[j]
    return out


def grouped_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, plan: DecodeGroups,
                             block_size: int) -> torch.Tensor:
    """paged_decode_attention by groups (plan_decode_groups): each decode sees only its own blocks.
    Same shapes in and out: q [n, heads, d]; pools [slots, kv_heads, d]. Returns [n, heads, d]."""
    kv_heads, d = k_pool.shape[1:]
    k_blocks, v_blocks = k_pool.view(-1, block_size, kv_heads, d), v_pool.view(-1, block_size, kv_heads, d)
    qs = q if plan.perm is None else q.index_select(0, plan.perm)
    outs, row = [], 0
    for chunk in plan.chunks:
        kc, vc = k_blocks.index_select(0, chunk.blocks), v_blocks.index_select(0, chunk.blocks)
        at = 0
        for g in chunk.groups:
            shape = (g.rows, g.width * block_size, kv_heads, d)
            kk = kc[at:at + g.rows * g.width].view(shape).transpose(1, 2)
            vv = vc[at:at + g.rows * g.width].view(shape).transpose(1, 2)
            outs.append(padded_decode_sdpa(qs[row:row + g.rows], kk, vv, g.valid))
            at, row = at + g.rows * g.width, row + g.rows
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out if plan.order is None else out.index_select(0, plan.order)
