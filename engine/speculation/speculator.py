"""Speculation's two questions, asked by the scheduler and the runner.

Per step: the scheduler asks `wanted` while it spends the budget (how many drafts could this decode
verify?), the runner asks `propose` for the decodes that were given drafts, verifies them
(acceptance.py), and cuts the draft model's own cache back to the tokens that stood (`kept`).
The target's blocks of rejected drafts are given back by the scheduler's update, like any other
KV change.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import EngineConfig, SpeculativeConfig
from ..requests.request import Request
from .acceptance import Proposal
from .ngram import NgramProposer


class Proposer(Protocol):
    def offer(self, request: Request, k: int) -> int: ...
    def propose(self, wanted: list[tuple[Request, int]]) -> list[Proposal]: ...
    def rollback(self, request_id: int, num_tokens: int) -> None: ...
    def free(self, request_id: int) -> None: ...


class Speculator:
    def __init__(self, config: SpeculativeConfig, proposer: Proposer):
        self.k = config.num_speculative_tokens
        self.proposer = proposer

    def wanted(self, request: Request, left: int) -> int:
        """Drafts the request could verify now: at most k, at most what is left of the budget, and
        one fewer than the tokens it still may generate (the target adds its own next token)."""
        k = min(self.k, left, request.max_new_tokens - len(request.output) - 1)
        return self.proposer.offer(request, k) if k > 0 else 0

    def propose(self, drafts: dict[Request, int]) -> dict[Request, Proposal]:
        wanted = list(drafts.items())
        return dict(zip(drafts, self.proposer.propose(wanted), strict=True))

    def keep(self, request_id: int, num_tokens: int) -> None:
        """The request keeps its first num_tokens (the drafts that stood; 0 when preempted): the
        draft model fed its own guesses, and those past the first rejected one are not its tokens."""
        self.proposer.rollback(request_id, num_tokens)

    def free(self, request_id: int) -> None:
        """The request finished."""
        self.proposer.free(request_id)


def make_speculator(config: EngineConfig, device: torch.device, dtype: torch.dtype, attention_fn) -> Speculator | None:
    if config.speculation is None:
        return None
    if config.speculation.method == "ngram":
        return Speculator(config.speculation, NgramProposer())
    from .draft_model import DraftModelProposer  # builds a second model: only when asked for
    return Speculator(config.speculation, DraftModelProposer(config.speculation.draft_model, config.llm.seed,
                                                             device, dtype, attention_fn))
