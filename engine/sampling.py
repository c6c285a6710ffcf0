"""Next-token choice: greedy by default; temperature / top-k with a per-request seeded generator."""

from __future__ import annotations

import torch


def sample(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> int:
    """logits: [vocab] for one request. Greedy when temperature is 0."""
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = probabilities(logits, temperature, top_k)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def probabilities(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """The distribution `sample` draws from (on the CPU, float32): logits [..., vocab] scaled by the
    temperature, cut to the top k when top_k > 0."""
    scaled = logits.float().cpu() / temperature
    if top_k > 0:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.softmax(scaled, dim=-1)


def greedy_batch(logits: torch.Tensor) -> list[int]:
    """Greedy tokens for every row with one device-to-host copy."""
    return torch.argmax(logits, dim=-1).tolist()
