"""Packs a step's scheduled items into one ragged batch: no padding, one row per token.

Keys for item s are its request's positions 0 .. key_len - 1 (cached history plus this step's
tokens), laid out one item after another. Query i may see key j iff seq(i) == seq(j) and
pos(j) <= pos(i): the ragged causal mask.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from itertools import accumulate, chain
from operator import attrgetter

import torch

from .records import ScheduledItem

_num_tokens, _key_len, _first_pos = attrgetter("num_tokens"), attrgetter("key_len"), attrgetter("first_pos")
_drafts = attrgetter("drafts")


@dataclass
class RaggedBatch:
    token_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long, position of each query token in its own sequence
    seq_ids: torch.Tensor  # [T] long, index of the item each query token belongs to
    cu_seqlens_q: torch.Tensor  # [S + 1] long, query offsets per item
    key_lens: torch.Tensor  # [S] long, keys each item attends over
    cu_seqlens_k: torch.Tensor  # [S + 1] long, key offsets per item
    sample_rows: torch.Tensor  # rows whose logits are sampled (items that finish their sequence)
    items: list[ScheduledItem]
    # host copies: per-item python lists for backends that loop
    q_lens: list[int]
    k_lens: list[int]
    first_positions: list[int]
    # Per-step values an attention backend derives once and reuses in every layer (index
    # tensors, a flex block mask). Filled lazily by the backends; never part of a record.
    scratch: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_keys(self) -> int:
        return sum(self.k_lens)

    def _key_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Per-key tensors are O(all cached history): built only for a path that reads packed keys
        # (decodes reading the pool never need them), once per step.
        if "key_index" not in self.scratch:
            self.scratch["key_index"] = _ranges(self.key_lens, self.cu_seqlens_k, self.num_keys)
        return self.scratch["key_index"]

    @property
    def key_seq_ids(self) -> torch.Tensor:
        """[K] long: the item each key belongs to."""
        return self._key_index()[0]

    @property
    def key_positions(self) -> torch.Tensor:
        """[K] long: each key's position in its own sequence."""
        return self._key_index()[1]

    def tail(self, first_item: int) -> RaggedBatch:
        """The items from `first_item` on, as a batch of their own (offsets and item indices
        re-based). Built once per step and shared by every layer, scratch included."""
        if first_item == 0:
            return self
        key = ("tail", first_item)
        if key not in self.scratch:
            n, q0, k0 = first_item, sum(self.q_lens[:first_item]), sum(self.k_lens[:first_item])
            self.scratch[key] = RaggedBatch(
                token_ids=self.token_ids[q0:], positions=self.positions[q0:], seq_ids=self.seq_ids[q0:] - n,
                cu_seqlens_q=self.cu_seqlens_q[n:] - q0, key_lens=self.key_lens[n:],
                cu_seqlens_k=self.cu_seqlens_k[n:] - k0, sample_rows=self.sample_rows[:0], items=self.items[n:],
                q_lens=self.q_lens[n:], k_lens=self.k_lens[n:], first_positions=self.first_positions[n:])
        return self.scratch[key]


def _ranges(lengths: torch.Tensor, offsets: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments of the given lengths laid end to end: (segment index, index within it)."""
    device = lengths.device
    seg = torch.repeat_interleave(torch.arange(lengths.shape[0], device=device), lengths, output_size=total)
    return seg, torch.arange(total, device=device) - offsets[seg]


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`. To a GPU through pinned memory, without blocking: a copy from
    pageable memory first waits for all the work queued before it, so the host could not prepare
    the next step while the GPU runs this one (engine/runner/overlap.py)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def long_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    """A host list as an int64 tensor: through a typed buffer, about 2.5x quicker than
    torch.tensor on a Python list of a few hundred ints (a per-step host cost)."""
    if not values:
        return torch.empty(0, dtype=torch.long, device=device)
    return to_device(torch.frombuffer(array("q", values), dtype=torch.long), device)


def build_batch(items: list[ScheduledItem], tokens: list[list[int]], samples: list[bool],
                device: torch.device) -> RaggedBatch:
    """tokens[s] are the token ids item s feeds; samples[s] says whether it samples after (its
    last row; every row of a speculating decode, whose drafts are verified).

    Only the token ids and per-item lengths cross from the host; per-token and per-key
    indices are expanded on the device, so host work is O(items + tokens), not O(keys).
    """
    token_ids = list(chain.from_iterable(tokens))
    q_lens = list(map(_num_tokens, items))
    if len(token_ids) != sum(q_lens):
        raise ValueError(f"{len(token_ids)} token ids for {sum(q_lens)} scheduled query tokens")
    k_lens = list(map(_key_len, items))
    firsts = list(map(_first_pos, items))
    if q_lens.count(1) == len(q_lens) and all(samples):
        return _decode_batch(items, token_ids, q_lens, k_lens, firsts, device)
    # Key lengths first: the Triton decode kernel reads them, and Triton compiles a variant per
    # pointer alignment; at an odd item count a later row would start 8 bytes off 16.
    meta = long_tensor(k_lens + q_lens + firsts, device).view(3, len(items))
    k_len_t, q_len_t, first_t = meta[0], meta[1], meta[2]
    zero = torch.zeros(1, dtype=torch.long, device=device)
    cu_q = torch.cat([zero, q_len_t.cumsum(0)])
    cu_k = torch.cat([zero, k_len_t.cumsum(0)])
    seq_ids, offset_in_item = _ranges(q_len_t, cu_q, sum(q_lens))
    drafts = list(map(_drafts, items))
    if any(drafts):
        sample_rows = long_tensor(_verified_rows(q_lens, samples, drafts), device)
    else:
        sample_rows = cu_q[long_tensor([s for s, flag in enumerate(samples) if flag], device) + 1] - 1
    return RaggedBatch(
        token_ids=long_tensor(token_ids, device),
        positions=first_t[seq_ids] + offset_in_item, seq_ids=seq_ids, cu_seqlens_q=cu_q,
        key_lens=k_len_t, cu_seqlens_k=cu_k,
        sample_rows=sample_rows, items=list(items),
        q_lens=q_lens, k_lens=k_lens, first_positions=firsts,
    )


def _verified_rows(q_lens: list[int], samples: list[bool], drafts: list[int]) -> list[int]:
    """The rows whose logits are kept: each sampling item's last, and a speculating decode's
    1 + drafts last (its last token's row, then one per draft)."""
    rows: list[int] = []
    end = 0
    for q_len, flag, n in zip(q_lens, samples, drafts, strict=True):
        end += q_len
        if flag:
            rows.extend(range(end - 1 - n, end))
    return rows


def _decode_batch(items, token_ids: list[int], q_lens: list[int], k_lens: list[int], firsts: list[int],
                  device) -> RaggedBatch:
    """Every item one token, every item sampling (most steps of a long run): each per-token index is
    a per-item one, so all of it is known on the host and crosses in one copy (on CUDA, one
    transfer instead of a dozen small kernels)."""
    n = len(items)
    host = long_tensor(token_ids + firsts + k_lens + [0, *accumulate(k_lens)], device)
    rows = torch.arange(n + 1, device=device)
    return RaggedBatch(
        token_ids=host[:n], positions=host[n:2 * n], seq_ids=rows[:n], cu_seqlens_q=rows,
        key_lens=host[2 * n:3 * n], cu_seqlens_k=host[3 * n:], sample_rows=rows[:n], items=list(items),
        q_lens=q_lens, k_lens=k_lens, first_positions=firsts,
    )


def ragged_causal_mask(batch: RaggedBatch) -> torch.Tensor:
    """The boolean [T, K] mask: True where query i may attend to key j."""
    same_seq = batch.seq_ids[:, None] == batch.key_seq_ids[None, :]
    causal = batch.key_positions[None, :] <= batch.positions[:, None]
    return same_seq & causal


def window_mask(batch: RaggedBatch, sinks: int, window: int) -> torch.Tensor:
    """The ragged causal mask narrowed to a sliding window with attention sinks (StreamingLLM): a
    query at position p sees keys p - window + 1 .. p and the first `sinks` positions."""
    kp, qp = batch.key_positions[None, :], batch.positions[:, None]
    return ragged_causal_mask(batch) & ((kp < sinks) | (kp > qp - window))


def mask_from_items(items: list[ScheduledItem], window: tuple[int, int] | None = None) -> list[list[bool]]:
    """The same mask computed from record metadata alone, in pure Python (small batches only);
    `window` = (sinks, window) narrows it as window_mask does."""
    sinks, size = window if window is not None else (0, 1 << 62)
    rows: list[list[bool]] = []
    for s, item in enumerate(items):
        for p in range(item.first_pos, item.first_pos + item.num_tokens):
            row: list[bool] = []
            for s2, other in enumerate(items):
                row.extend((s2 == s and kp <= p and (kp < sinks or kp > p - size)) for kp in range(other.key_len))
            rows.append(row)
    return rows
