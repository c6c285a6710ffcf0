"""Next-token choice: greedy by default; temperature / top-k / top-p with a per-request seeded generator.

A step samples every row at once (`sample_batch`): one argmax for the greedy rows, and for the
sampled rows one scaling, one top-k and one top-p cut, one softmax and one inverse-CDF draw over
the whole [rows, vocab] block, instead of a softmax per request (with a 49k vocabulary that is most of
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

from .cpu_kernels import is_built as cpu_kernels_built


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


NUCLEUS_CANDIDATES = 1024  # top-p looks among this many most likely tokens first (a sort of 49k is slow)


def _distributions(logits: torch.Tensor, temperatures: Sequence[float], top_ks: Sequence[int],
                   top_ps: Sequence[float], request_ids: Sequence[int | None]) -> torch.Tensor:
    """Each row's probabilities, in vocabulary order (a row's draw must not depend on its neighbours)."""
    scaled = logits.float().cpu() / torch.tensor(temperatures, dtype=torch.float32).unsqueeze(-1)
    if any(k > 0 for k in top_ks):
        scaled = _top_k(scaled, top_ks)
    if any(p < 1 for p in top_ps):
        rows = [i for i, p in enumerate(top_ps) if p < 1]
        scaled[rows] = _top_p(scaled[rows], torch.tensor([top_ps[i] for i in rows], dtype=torch.float32))
    probs = torch.softmax(scaled, dim=-1)
    finite = torch.isfinite(probs).all(dim=-1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise SamplingError(_no_distribution(logits[row], temperatures[row], request_ids[row]))
    return probs


def _top_k(scaled: torch.Tensor, top_ks: Sequence[int]) -> torch.Tensor:
    """Each row cut below its k-th largest logit (top_k 0: uncut). Ties with the k-th stay in, as
    torch.topk's threshold always kept them. One topk call, to the largest k of the batch."""
    vocab = scaled.shape[-1]
    largest = torch.topk(scaled, min(max(top_ks), vocab), dim=-1).values
    kth = torch.tensor([min(k, vocab) - 1 if k > 0 else 0 for k in top_ks]).unsqueeze(-1)
    threshold = largest.gather(-1, kth)
    threshold[torch.tensor([k <= 0 for k in top_ks])] = float("-inf")
    return scaled.masked_fill(scaled < threshold, float("-inf"))


def _top_p(scaled: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Each row cut to its nucleus: the most likely tokens until their mass reaches top_p (the first
    always stays). Looked for among the NUCLEUS_CANDIDATES most likely tokens; a row whose nucleus
    is wider (a flat distribution) is sorted whole."""
    probs = torch.softmax(scaled, dim=-1)
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    values, order = torch.topk(probs, k, dim=-1)
    cumulative = torch.cumsum(values, dim=-1)
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, cumulative - values < top_ps.unsqueeze(-1))
    wide = (cumulative[:, -1] < top_ps).nonzero().flatten().tolist() if k < probs.shape[-1] else []
    if wide:
        values, order = torch.sort(probs[wide], dim=-1, descending=True)
        inside = torch.cumsum(values, dim=-1) - values < top_ps[wide].unsqueeze(-1)
        keep[wide] = torch.zeros_like(inside).scatter_(-1, order, inside)
    return scaled.masked_fill(~keep, float("-inf"))


def _no_distribution(logits: torch.Tensor, temperature: float, request_id: int | None) -> str:
    who = "a request" if request_id is None else f"request {request_id}"
    bad = "NaN" if bool(torch.isnan(logits).any()) else "inf" if bool(torch.isinf(logits).any()) else "NaN or inf"
    return (f"{who}: the model's logits hold {bad}, so there is no distribution to sample at temperature "
            f"{temperature:g} (the model's weights hold NaN or inf?); greedy (temperature 0) still picks a "
            f"token, but not a meaningful one")


def greedy_batch(logits: torch.Tensor) -> list[int]:
    """Greedy tokens for every row with one device-to-host copy. `max(dim).indices` is argmax, ties
    included (the first largest), and on the CPU 4-5x quicker over a 49k bf16 vocabulary; the CPU
    kernel (cpu_kernels/csrc/greedy.cpp, where it was built) picks the same tokens, quicker again."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.bfloat16) and cpu_kernels_built():
        return torch.ops.cbtui.greedy(logits).tolist()
    return logits.max(dim=-1).indices.tolist()
