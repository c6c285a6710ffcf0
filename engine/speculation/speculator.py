"""The engine's side of speculation: asks the proposer, counts, and rolls back what was rejected.

Per step: the scheduler asks `wanted` while it spends the budget (budget.py), the engine asks
`propose` for the decodes that were given drafts, the runner verifies them (acceptance.py), and
`settle` moves the counts onto the requests and rolls the KV cache back to the accepted tokens:
the rejected drafts' slots are released (paged: whole blocks left empty go back to the pool; the
tail of the last block is simply written again later; dense: the tensors are cut), and the draft
model's own cache is cut the same way.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import EngineConfig
from ..request import Request
from .acceptance import Proposal
from .ngram import NgramProposer


class Proposer(Protocol):
    def offer(self, request: Request, k: int) -> int: ...
    def propose(self, wanted: list[tuple[Request, int]]) -> list[Proposal]: ...
    def rollback(self, request: Request) -> None: ...
    def free(self, request_id: int) -> None: ...


class Speculator:
    def __init__(self, config: EngineConfig, proposer: Proposer, kv):
        self.k = config.num_speculative_tokens
        self.proposer, self.kv = proposer, kv

    def wanted(self, request: Request, left: int) -> int:
        """Drafts the request could verify now: at most k, at most what is left of the budget, and
        one fewer than the tokens it still may generate (the target adds its own next token)."""
        k = min(self.k, left, request.max_new_tokens - len(request.output) - 1)
        return self.proposer.offer(request, k) if k > 0 else 0

    def propose(self, drafts: dict[Request, int]) -> dict[Request, Proposal]:
        wanted = list(drafts.items())
        return dict(zip(drafts, self.proposer.propose(wanted), strict=True))

    def settle(self, proposals: dict[Request, Proposal], kept: dict[Request, list[int]]) -> dict[int, tuple[int, ...]]:
        """Counts each speculating request's drafts and rolls its caches back to its accepted tokens;
        returns the KV blocks that emptied, by request id."""
        freed: dict[int, tuple[int, ...]] = {}
        for r, (drafts, _) in proposals.items():
            r.drafts_proposed += len(drafts)
            r.drafts_accepted += len(kept[r])
            if r.is_finished:  # its caches are already freed
                continue
            blocks = self.kv.rollback(r.id, r.num_computed)
            r.kv_capacity = self.kv.capacity(r.id)
            if blocks:
                freed[r.id] = blocks
            self.proposer.rollback(r)
        return freed

    def preempted(self, requests) -> None:
        """Preempted requests computed nothing now: the draft model's cache of them goes too (it is
        fed again from the start, as the target recomputes)."""
        for r in requests:
            self.proposer.rollback(r)

    def free(self, request_id: int) -> None:
        self.proposer.free(request_id)


def make_speculator(config: EngineConfig, kv, device: torch.device, dtype: torch.dtype,
                    attention_fn) -> Speculator | None:
    if config.speculative is None:
        return None
    if config.speculative == "ngram":
        return Speculator(config, NgramProposer(), kv)
    from .draft_model import DraftModelProposer  # builds a second model: only when asked for
    return Speculator(config, DraftModelProposer(config, device, dtype, attention_fn), kv)
