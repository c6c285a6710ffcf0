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
- `grouped_decode_attention` (the CPU): decodes grouped by table width, each group gathered only
  as wide as its own tables and small enough to stay in the CPU cache, one sdpa per group. With
  key lengths uniform in 32..1024 about 45% of the padded path's keys are padding, and a gather of
  several MB runs out of cache before sdpa reads it back (3-5x slower per key on the 2-core test
  machine). A decode's output is then exactly what it is when the decode runs alone: no other
  decode sets its width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .single import padded_decode_sdpa

# Keys (of one layer, all kv heads, K and V) one group may gather on the CPU: 4 MiB at float32,
# 2 kv heads of 64, which stays in a 2 MiB-per-core L2 plus the L3 share a busy core gets.
GROUP_BYTES = 4 << 20


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
    rows: torch.Tensor  # [g] the decodes of the group (indices into the step's decodes)
    blocks: torch.Tensor  # [g * width] their tables, cut to the group's width, flattened
    valid: torch.Tensor  # [g, width * block_size] False past each decode's key length


@dataclass(frozen=True)
class DecodeGroups:
    """One step's decodes grouped by table width: built once per step, used by every layer."""

    groups: list[DecodeGroup]
    order: torch.Tensor  # [n] where each decode's output row is in the groups' concatenated output

    @property
    def widths(self) -> list[int]:
        return [g.valid.shape[1] for g in self.groups]


def plan_decode_groups(tables: torch.Tensor, key_lens: list[int], block_size: int, key_bytes: int,
                       group_bytes: int = GROUP_BYTES) -> DecodeGroups:
    """Groups decodes of equal table width (blocks for their key length); a group holds at most
    group_bytes of gathered keys and values (key_bytes per key position, both pools, all kv heads),
    but always at least one decode. tables [n, >= widest] on the device, key_lens on the host."""
    widths = [-(-length // block_size) for length in key_lens]
    by_width = sorted(range(len(key_lens)), key=widths.__getitem__)
    spans: list[tuple[int, int]] = []  # [start, stop) in by_width
    start = 0
    for i in range(1, len(by_width) + 1):
        if i == len(by_width) or widths[by_width[i]] != widths[by_width[start]] \
                or (i + 1 - start) * widths[by_width[start]] * block_size * key_bytes > group_bytes:
            spans.append((start, i))
            start = i
    device = tables.device
    perm = torch.tensor(by_width, dtype=torch.long, device=device)
    lens = torch.tensor(key_lens, dtype=torch.long, device=device)
    groups = []
    for a, b in spans:
        w = widths[by_width[a]]
        rows = perm[a:b]
        keys = torch.arange(w * block_size, device=device)
        groups.append(DecodeGroup(rows, tables.index_select(0, rows)[:, :w].reshape(-1),
                                  keys[None, :] < lens.index_select(0, rows)[:, None]))
    return DecodeGroups(groups, torch.argsort(perm))


def grouped_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, plan: DecodeGroups,
                             block_size: int) -> torch.Tensor:
    """paged_decode_attention by groups (plan_decode_groups): each decode sees only its own blocks.
    Same shapes in and out: q [n, heads, d]; pools [slots, kv_heads, d]. Returns [n, heads, d]."""
    if len(plan.groups) == 1:  # one width: the rows are in order (a stable sort of equal keys)
        group = plan.groups[0]
        kk, vv = _gather_blocks(k_pool, v_pool, group.blocks, q.shape[0], block_size)
        return padded_decode_sdpa(q, kk, vv, group.valid)
    outs = []
    for group in plan.groups:
        kk, vv = _gather_blocks(k_pool, v_pool, group.blocks, group.rows.shape[0], block_size)
        outs.append(padded_decode_sdpa(q.index_select(0, group.rows), kk, vv, group.valid))
    return torch.cat(outs).index_select(0, plan.order)
