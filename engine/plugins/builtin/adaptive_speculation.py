"""Adaptive k for speculative decoding: each request's drafts follow its own acceptance rate.

A request whose drafts are mostly rejected wastes budget verifying them; one whose drafts stand
could take more. Once a request has had `warmup` drafts verified, its k for the step is
1 + round(rate * (k_max - 1)): k_max when every draft stood, 1 (still probing) when none did.
"""

from __future__ import annotations

from ..base import SchedulerPlugin, SchedulerState


class AdaptiveSpeculationPlugin(SchedulerPlugin):
    name = "adaptive_speculation"

    def __init__(self, warmup: int = 8):
        if type(warmup) is not int or warmup < 1:
            raise ValueError(f"warmup={warmup!r} must be an integer >= 1")
        self.warmup = warmup
        self.k_max = 0
        self.last: dict[int, int] = {}  # request id -> its k in the last step

    def check_config(self, config) -> None:
        if config.speculation is None:
            raise ValueError("plugin adaptive_speculation adapts speculative decoding; set speculative = "
                             "\"ngram\" or \"draft\"")
        self.k_max = config.speculation.num_speculative_tokens

    def before_step(self, state: SchedulerState) -> None:
        self.last = {}
        for r in state.running:
            if r.drafts_proposed >= self.warmup:
                rate = r.drafts_accepted / r.drafts_proposed
                k = 1 + round(rate * (self.k_max - 1))
                state.speculate(r.id, k)
                self.last[r.id] = k

    def describe(self) -> str:
        if not self.last:
            return f"adaptive k (max {self.k_max})"
        ks = sorted(self.last.values())
        return f"adaptive k {ks[0]}..{ks[-1]} of {self.k_max}"
