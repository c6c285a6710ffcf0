"""Overlapped steps: the host schedules and launches step N+1 while the GPU still runs step N.

Without it every step is host work, then device work, then host work again, and the GPU idles
while the host schedules. With `EngineConfig.overlap_steps`, a step's sampled tokens stay on the
device: the next step is scheduled from token counts alone (which is all the scheduler needs when
requests end at max_new_tokens, not at an EOS token), its decodes read their input tokens from the
previous step's sampled tensor on the device, and the tokens reach the host one step later, from a
pinned buffer, while the GPU works on.

Until then a request's output holds PENDING_TOKEN where the token will go; engine/overlapped_steps.py
holds each step's record back until its tokens are in. Greedy only, no plugins, no EOS (EngineConfig
and Engine check). Meant for throughput runs; the dashboard steps synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..batch_builder import long_tensor

PENDING_TOKEN = -1  # in Request.output until the step that sampled it is resolved


@dataclass
class DeviceTokens:
    """A step's greedy tokens, left on the device for the next step's decodes, with a copy on its
    way to the host and the event that says it has arrived (None off CUDA: already there)."""

    request_ids: list[int]  # whose token each row is
    on_device: torch.Tensor  # [rows]
    on_host: torch.Tensor  # the same, copied without blocking (pinned memory on CUDA)
    copied: torch.cuda.Event | None

    @classmethod
    def sample(cls, logits: torch.Tensor, request_ids: list[int]) -> DeviceTokens:
        chosen = torch.argmax(logits, dim=-1)
        if chosen.device.type != "cuda":
            return cls(request_ids, chosen, chosen, None)
        host = torch.empty(chosen.shape, dtype=chosen.dtype, pin_memory=True)
        host.copy_(chosen, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return cls(request_ids, chosen, host, copied)

    @property
    def row_of(self) -> dict[int, int]:
        return {rid: row for row, rid in enumerate(self.request_ids)}

    def to_host(self) -> list[int]:
        """Waits for this step's tokens only (later steps keep running)."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.on_host.tolist()


def feed_pending_tokens(token_ids: torch.Tensor, tokens: list[list[int]], request_ids: list[int],
                        previous: DeviceTokens | None) -> None:
    """Replaces, on the device, each decode's PENDING_TOKEN input by the token the previous step
    sampled for it. Only decodes can hold one: a request's placeholder is resolved before it could
    be recomputed (preemption readmits it at the earliest two steps later)."""
    rows, sources = [], []
    row_of = previous.row_of if previous is not None else {}
    row = 0
    for fed, rid in zip(tokens, request_ids, strict=True):
        if PENDING_TOKEN in fed:
            if len(fed) != 1 or rid not in row_of:
                raise RuntimeError(f"request {rid} feeds an unresolved token outside a decode")
            rows.append(row)
            sources.append(row_of[rid])
        row += len(fed)
    if rows:
        assert previous is not None  # rows come from previous.row_of
        index = long_tensor(rows + sources, token_ids.device).view(2, len(rows))
        token_ids[index[0]] = previous.on_device[index[1]]
