"""A deliberately leaky plugin, for the leak detector to catch (scenario memory_leak).

It stands for a classic serving bug: a debugging hook that keeps "just a reference" to what it
saw, every step, and never lets go. This one keeps a copy of every layer's attention inputs
(queries, keys and values) of every step in a list that only grows, so the process's memory climbs
by a few hundred KiB per step while the engine's own memory (weights, KV pool) stays flat. The
metrics screen (m) then flags `rss` with "LEAK?" and says why: the growth in MiB over the window
and that it climbed in every part of it. `bytes_kept` says how much it holds. Outputs are unchanged.
"""

from __future__ import annotations

from ..base import AttentionPlugin


class LeakyPlugin(AttentionPlugin):
    name = "leaky"

    def __init__(self):
        self.kept: list = []  # the leak: every step's tensors, never released
        self.bytes_kept = 0

    def wrap(self, layer_idx: int, attention):
        def keep_inputs(q, k, v, batch):
            saved = (q.detach().clone(), k.detach().clone(), v.detach().clone())
            self.kept.append(saved)
            self.bytes_kept += sum(t.nbytes for t in saved)
            return attention(q, k, v, batch)
        return keep_inputs

    def describe(self) -> str:
        return f"leaky: holding {self.bytes_kept / 2**20:.1f} MiB of old attention inputs"
