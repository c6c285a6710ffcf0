"""Next-token choice: greedy by default; temperature / top-k / top-p with a per-request seeded generator.

A step samples every row at once (`sample_batch`): one argmax for the greedy rows, and for the
sampled rows one scaling, one top-k / top-p cut, one softmax and one inverse-CDF draw over the
whole [rows, vocab] block, instead of a softmax per request (with a 49k vocabulary that is most of
a small batch's sampling time). Each sampled row still takes exactly one uniform number from its
own request's generator, so a seeded request draws the same tokens alone or in any batch.

Logits that hold NaN or inf (weights that do) give no distribution to draw from: sampling says so
in one line naming the request (SamplingError) instead of a garbage token. Greedy choice (argmax)
always has an answer, and keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class SamplingError(ValueError):
    """A request's logits give no distribution to sample; the message names the request."""


class SamplingSettings(Protocol):
    """What sampling reads of a request (engine.requests.request.Request has these)."""

    id: int
    temperature: float
    top_k: int
    top_p: float


def sample_batch(logits: torch.Tensor, requests: Sequence[SamplingSettings],
                 generators: dict[int, torch.Generator]) -> list[int]:
    """logits: [rows, vocab], row i for requests[i]. Greedy rows (temperature 0) take their argmax;
    the others are drawn together, each with generators[its id] (unseeded: torch's default)."""
    tokens = greedy_batch(logits)
    rows = [i for i, r in enumerate(requests) if r.temperature > 0]
    if not rows:
        return tokens
    chosen = [requests[i] for i in rows]
    drawn = draw(logits[rows], [r.temperature for r in chosen], [r.top_k for r in chosen],
                 [r.top_p for r in chosen], [generators.get(r.id) for r in chosen], [r.id for r in chosen])
    for i, token in zip(rows, drawn, strict=True):
        tokens[i] = token
    return tokens


def sample(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None,
           request_id: int | None = None, top_p: float = 1.0) -> int:
    """logits: [vocab] for one request. Greedy when temperature is 0; else the draw sample_batch makes."""
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    return draw(logits[None], [temperature], [top_k], [top_p], [generator], [request_id])[0]


def draw(logits: torch.Tensor, temperatures: Sequence[float], top_ks: Sequence[int], top_ps: Sequence[float],
         generators: Sequence[torch.Generator | None], request_ids: Sequence[int | None]) -> list[int]:
    """One token per row of logits [rows, vocab]: inverse CDF at one uniform from each row's generator."""
    probs = _distributions(logits, temperatures, top_ks, top_ps, request_ids)
    uniform = torch.cat([torch.rand(1, generator=g) for g in generators])
    cdf = torch.cumsum(probs, dim=-1)
    # right=True: the first token whose cdf passes u, never a zero-probability one
    picked = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1), right=True)
    picked = picked.clamp_(max=probs.shape[-1] - 1)
    return picked.squeeze(-1).tolist()


def probabilities(logits: torch.Tensor, temperature: float, top_k: int,
                  request_id: int | None = None, top_p: float = 1.0) -> torch.Tensor:
    """The distribution one request draws from (on the CPU, float32): logits [..., vocab] scaled by
    the temperature, cut to the top k when top_k > 0 and to the nucleus top_p when below 1.
    SamplingError when a row has none (NaN or inf)."""
    flat = logits.reshape(-1, logits.shape[-1])
    rows = flat.shape[0]
    probs = _distributions(flat, [temperature] * rows, [top_k] * rows, [top_p] * rows, [request_id] * rows)
    return probs.reshape(logits.shape)


def _distributions(logits: torch.Tensor, temperatures: Sequence[float], top_ks: Sequence[int],
                   top_ps: Sequence[float], request_ids: Sequence[int | None]
                   ) -> torch.Tensor:
    """Each row's probabilities, in vocabulary order (a cut by top-k or top-p sorts the rows once)."""
    scaled = logits.float().cpu() / torch.tensor(temperatures, dtype=torch.float32).unsqueeze(-1)
    vocab = scaled.shape[-1]
    if any(k > 0 for k in top_ks) or any(p < 1 for p in top_ps):
        scaled, order = torch.sort(scaled, dim=-1, descending=True)
        if any(k > 0 for k in top_ks):
            # Ties with the k-th logit stay in, as torch.topk's threshold has always kept them.
            kth = torch.tensor([min(k, vocab) - 1 if k > 0 else vocab - 1 for k in top_ks]).unsqueeze(-1)
            scaled = scaled.masked_fill(scaled < scaled.gather(-1, kth), float("-inf"))
        if any(p < 1 for p in top_ps):
            sorted_probs = torch.softmax(scaled, dim=-1)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above
            # the nucleus: tokens until the mass reaches top_p (the first always stays)
            outside = before >= torch.tensor(top_ps, dtype=torch.float32).unsqueeze(-1)
            scaled = scaled.masked_fill(outside, float("-inf"))
        # back to vocabulary order: a row's draw must not depend on whether a neighbour sorted the batch
        scaled = torch.empty_like(scaled).scatter_(-1, order, scaled)
    probs = torch.softmax(scaled, dim=-1)
    finite = torch.isfinite(probs).all(dim=-1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise SamplingError(_no_distribution(logits[row], temperatures[row], request_ids[row]))
    return probs


def _no_distribution(logits: torch.Tensor, temperature: float, request_id: int | None) -> str:
    who = "a request" if request_id is None else f"request {request_id}"
    bad = "NaN" if bool(torch.isnan(logits).any()) else "inf" if bool(torch.isinf(logits).any()) else "NaN or inf"
    return (f"{who}: the model's logits hold {bad}, so there is no distribution to sample at temperature "
            f"{temperature:g} (the model's weights hold NaN or inf?); greedy (temperature 0) still picks a "
            f"token, but not a meaningful one")


def greedy_batch(logits: torch.Tensor) -> list[int]:
    """Greedy tokens for every row with one device-to-host copy."""
    return torch.argmax(logits, dim=-1).tolist()
