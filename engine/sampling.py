"""Next-token choice: greedy by default; temperature / top-k with a per-request seeded generator."""

from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> int:
    """logits: [vocab] for one request. Greedy when temperature is 0."""
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    scaled = logits.float().cpu() / temperature
    if top_k > 0:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1])).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def greedy_batch(logits: torch.Tensor) -> list[int]:
    """Greedy tokens for every row with one device-to-host copy."""
    return torch.argmax(logits, dim=-1).tolist()
