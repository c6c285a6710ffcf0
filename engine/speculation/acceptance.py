"""Which drafts stand: the target's logits at a speculating decode's 1 + k rows decide.

Row i of the item is the target's distribution for the token after draft i (row 0: after the
request's last token). Greedy: drafts are accepted while each equals the target's argmax at the
row before it, and the argmax after the last accepted one is the target's own next token, so the
output is token for token what plain greedy decoding gives. Sampling: the standard rejection rule
(Leviathan et al., Chen et al., 2023): draft d at row i stands with probability min(1, p_i(d) /
q_i(d)); the first one rejected is replaced by a draw from max(0, p_i - q_i), renormalised; if all
stand, the next token is drawn from p_k. The output is then distributed as the target's. A lookup
proposal (no q) is a point mass: q_i(d) = 1.
"""

from __future__ import annotations

import torch

from ..requests.request import Request
from ..sampling import probabilities, sample

Proposal = tuple[list[int], torch.Tensor | None]  # drafts, and the draft distributions [k, vocab] or None


def greedy_accept(targets: list[int], drafts: list[int]) -> int:
    """How many drafts match the target's argmax at the row before each (targets has 1 + k rows)."""
    accepted = 0
    for draft, target in zip(drafts, targets, strict=False):
        if draft != target:
            break
        accepted += 1
    return accepted


def rejection_sample(p: torch.Tensor, drafts: list[int], q: torch.Tensor | None,
                     generator: torch.Generator | None) -> tuple[int, int]:
    """p: the target's distributions [1 + k, vocab]; q: the draft's [k, vocab], or None for point
    masses. Returns (drafts accepted, the next token)."""
    p = p.double()
    for i, d in enumerate(drafts):
        q_d = 1.0 if q is None else float(q[i, d])
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if u * q_d < float(p[i, d]):  # u < p/q: stands with probability min(1, p/q)
            continue
        if q is None:
            residual = p[i].clone()
            residual[d] = 0.0
        else:
            residual = (p[i] - q[i].double()).clamp_min(0.0)
        total = float(residual.sum())
        residual = residual / total if total > 0 else p[i]  # total 0 only when p == q (never rejected)
        return i, int(torch.multinomial(residual, 1, generator=generator).item())
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator).item())


def verify(logits: torch.Tensor, sampling: list[Request], proposals: list[Proposal | None],
           generators: dict[int, torch.Generator], stop_ids: frozenset[int]) -> tuple[list[int], list[list[int]]]:
    """logits: the step's sampled rows, in order: one per request that samples, 1 + k for one that
    speculates (proposals[i] not None). Returns each request's next token and the drafts it keeps
    (cut at the first stop id, an EOS: it is then the next token, as plain decoding would stop there)."""
    greedy = torch.argmax(logits, dim=-1).tolist()  # one device-to-host copy for every greedy row
    chosen: list[int] = []
    kept: list[list[int]] = []
    row = 0
    for r, proposal in zip(sampling, proposals, strict=True):
        if proposal is None:
            token = greedy[row] if r.temperature <= 0 else sample(logits[row], r.temperature, r.top_k,
                                                                  generators.get(r.id), r.id, r.top_p)
            chosen.append(token)
            kept.append([])
            row += 1
            continue
        drafts, q = proposal
        rows = len(drafts) + 1
        if r.temperature <= 0:
            accepted = greedy_accept(greedy[row:row + rows], drafts)
            token = greedy[row + accepted]
        else:
            p = probabilities(logits[row:row + rows], r.temperature, r.top_k, r.id, r.top_p)
            accepted, token = rejection_sample(p, drafts, q, generators.get(r.id))
        row += rows
        good = drafts[:accepted]
        stop = next((i for i, t in enumerate(good) if t in stop_ids), None) if stop_ids else None
        if stop is not None:
            good, token = good[:stop], good[stop]
        chosen.append(token)
        kept.append(good)
    return chosen, kept
