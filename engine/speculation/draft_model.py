"""Draft-model proposals: a smaller model of the same vocabulary guesses k tokens, one at a time.

The draft keeps its own KV cache (dense: a request's keys and values in one tensor per layer). At
each step it first catches up on the tokens of the request it has not seen (the whole prompt the
first time; afterwards the tokens accepted since, and the target's own next token), then proposes
k tokens autoregressively, all speculating requests in one ragged batch per round. After
verification its cache is cut back to the target's accepted tokens, like the target's.

Greedy requests get the draft's argmax; sampled ones a draw from the draft's distribution at the
request's temperature and top-k (its own seeded generator), kept for the rejection rule.
"""

from __future__ import annotations

import torch

from ..attention.layer_attention import PackedAttention
from ..batch_builder import build_batch
from ..kv.dense_store import DenseKVStore
from ..models.llama import PRESETS, build_model
from ..records import ScheduledItem
from ..requests.request import Request
from ..sampling import probabilities
from .acceptance import Proposal

DRAFT_SEED_SALT = 0x5EED  # a sampled request's draft draws differ from its target draws


class DraftModelProposer:
    def __init__(self, preset: str, seed: int, device: torch.device, dtype: torch.dtype, attention_fn):
        """preset: the draft's; seed: the run's (a sampled request's draft draws derive from it)."""
        spec = PRESETS[preset]  # of the target's vocabulary (model_runner.stop_ids checks)
        self.seed, self.device = seed, device
        # The same seed: a draft of the target's own preset is the target itself (every draft stands).
        self.model = build_model(preset, seed, device, dtype, keep_draws=False)
        self.kv = DenseKVStore(spec.num_layers, spec.num_kv_heads, spec.head_dim, dtype, device)
        self.attention = [PackedAttention(attention_fn) for _ in range(spec.num_layers)]
        self.generators: dict[int, torch.Generator] = {}

    def offer(self, request: Request, k: int) -> int:
        return k  # a model always has a guess

    def propose(self, wanted: list[tuple[Request, int]]) -> list[Proposal]:
        drafts: dict[int, list[int]] = {r.id: [] for r, _ in wanted}
        dists: dict[int, list[torch.Tensor]] = {r.id: [] for r, _ in wanted}
        # Round 0 feeds what the draft has not seen; each later round the draft's last guess.
        feeds = []
        for r, _ in wanted:
            held = self.kv.held(r.id)
            feeds.append(r.token_slice(held, r.num_tokens - held))
        active = list(wanted)
        while active:
            logits = self._forward([r for r, _ in active], feeds)
            next_active, next_feeds = [], []
            for row, (r, n) in enumerate(active):
                token = self._choose(r, logits[row], dists[r.id])
                drafts[r.id].append(token)
                if len(drafts[r.id]) < n:
                    next_active.append((r, n))
                    next_feeds.append([token])
            active, feeds = next_active, next_feeds
        return [(drafts[r.id], torch.stack(dists[r.id]) if dists[r.id] else None) for r, _ in wanted]

    def _forward(self, requests: list[Request], feeds: list[list[int]]) -> torch.Tensor:
        items = []
        for r, fed in zip(requests, feeds, strict=True):
            first = self.kv.held(r.id)
            items.append(ScheduledItem(r.id, "prefill", first, len(fed), first + len(fed)))
        batch = build_batch(items, feeds, [True] * len(items), self.device)
        self.kv.begin_step([r.id for r in requests], batch)
        self.model.reserve_positions(max(batch.k_lens))
        return self.model(batch.token_ids, batch.positions, batch.sample_rows, self.kv, self.attention, batch)

    def _choose(self, r: Request, logits: torch.Tensor, dists: list[torch.Tensor]) -> int:
        if r.temperature <= 0:
            return int(torch.argmax(logits).item())
        q = probabilities(logits, r.temperature, r.top_k, r.id)
        dists.append(q)
        return int(torch.multinomial(q, 1, generator=self._generator(r)).item())

    def _generator(self, r: Request) -> torch.Generator:
        if r.id not in self.generators:
            seed = r.seed if r.seed is not None else self.seed * 1_000_003 + r.id
            self.generators[r.id] = torch.Generator().manual_seed((seed ^ DRAFT_SEED_SALT) % 2**63)
        return self.generators[r.id]

    def rollback(self, request_id: int, num_tokens: int) -> None:
        """Keeps the draft's keys and values for the tokens the target kept."""
        self.kv.rollback(request_id, num_tokens)

    def free(self, request_id: int) -> None:
        self.kv.free(request_id)
        self.generators.pop(request_id, None)
