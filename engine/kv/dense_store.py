"""DenseKVStore: each request owns contiguous K/V tensors per layer, grown by concatenation.

The dense layout has no blocks, so nothing for a block manager to decide: it grows on demand and
never runs short (the scheduler runs without a block manager). It speaks the same step protocol to
the model as the paged store (begin_step, write, read).
"""

from __future__ import annotations

import torch

from ..batch_builder import RaggedBatch
from .paged_store import kv_bytes_per_token


class DenseKVStore:
    layout = "dense"
    step_request_ids: list[int]  # set by begin_step
    step_batch: RaggedBatch

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.bytes_per_token = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
        self.store: dict[int, list[list[torch.Tensor]]] = {}  # rid -> [layer] -> [k, v]

    def held(self, request_id: int) -> int:
        """Tokens whose keys and values the request has stored."""
        entry = self.store.get(request_id)
        return 0 if entry is None else entry[0][0].shape[0]

    @property
    def pool_bytes(self) -> int:
        return sum(map(self.held, self.store)) * self.bytes_per_token

    def apply(self, released: list[int], tables: dict[int, tuple[int, ...]]) -> None:
        """A plan's changes: released requests' tensors go (there are no tables)."""
        for rid in released:
            self.free(rid)

    def rollback(self, request_id: int, num_tokens: int) -> None:
        """Cuts the request's keys and values to its first num_tokens positions (rejected drafts)."""
        if request_id in self.store:
            self.store[request_id] = [[k[:num_tokens], v[:num_tokens]] for k, v in self.store[request_id]]

    def free(self, request_id: int) -> None:
        self.store.pop(request_id, None)

    def begin_step(self, request_ids: list[int], batch: RaggedBatch) -> None:
        self.step_request_ids, self.step_batch = request_ids, batch
        for rid, item in zip(request_ids, batch.items, strict=True):
            held = self.held(rid)
            assert held == item.first_pos, f"dense store: request {rid} holds {held}, step starts at {item.first_pos}"
            if rid not in self.store:
                empty = torch.empty((0, self.num_kv_heads, self.head_dim), dtype=self.dtype, device=self.device)
                self.store[rid] = [[empty, empty] for _ in range(self.num_layers)]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        q_lens = self.step_batch.q_lens
        for rid, k_new, v_new in zip(self.step_request_ids, k.split(q_lens), v.split(q_lens), strict=True):
            entry = self.store[rid][layer]
            entry[0] = torch.cat([entry[0], k_new])
            entry[1] = torch.cat([entry[1], v_new])

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        ks = [self.store[rid][layer][0] for rid in self.step_request_ids]
        vs = [self.store[rid][layer][1] for rid in self.step_request_ids]
        return torch.cat(ks), torch.cat(vs)

    def flatten(self, layer: int, request_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.store[request_id][layer]
        return k, v
