"""Next-token choice: greedy by default; temperature / top-k with a per-request seeded generator.

Logits that hold NaN or inf (weights that do) give no distribution to draw from: sampling says so
in one line naming the request (SamplingError) instead of torch's "probability tensor contains
inf, nan". Greedy choice (argmax) always has an answer, and keeps it.
"""

from __future__ import annotations

import torch


class SamplingError(ValueError):
    """A request's logits give no distribution to sample; the message names the request."""


def sample(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None,
           request_id: int | None = None) -> int:
    """logits: [vocab] for one request. Greedy when temperature is 0."""
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = probabilities(logits, temperature, top_k, request_id)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def probabilities(logits: torch.Tensor, temperature: float, top_k: int,
                  request_id: int | None = None) -> torch.Tensor:
    """The distribution `sample` draws from (on the CPU, float32): logits [..., vocab] scaled by the
    temperature, cut to the top k when top_k > 0. SamplingError when a row has none (NaN or inf)."""
    scaled = logits.float().cpu() / temperature
    if top_k > 0:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if not bool(torch.isfinite(probs).all()):
        who = "a request" if request_id is None else f"request {request_id}"
        bad = "NaN" if bool(torch.isnan(logits).any()) else "inf" if bool(torch.isinf(logits).any()) else "NaN or inf"
        raise SamplingError(f"{who}: the model's logits hold {bad}, so there is no distribution to sample at "
                            f"temperature {temperature:g} (the model's weights hold NaN or inf?); greedy "
                            f"(temperature 0) still picks a token, but not a meaningful one")
    return probs


def greedy_batch(logits: torch.Tensor) -> list[int]:
    """Greedy tokens for every row with one device-to-host copy."""
    return torch.argmax(logits, dim=-1).tolist()
