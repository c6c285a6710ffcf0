"""Sliding-window attention with attention sinks (StreamingLLM, Xiao et al. 2023), as a plugin.

Each query sees only the last `window` positions of its own sequence (itself included) plus the
first `sinks` positions, the "attention sinks" that soak up attention mass a softmax must put
somewhere. The per-step cost of attention then stops growing with the context. It is an
AttentionPlugin: `wrap` replaces every layer's attention with the reference computation under the
narrowed mask. It also tells the record the window it used (`attention_window`), so the dashboard's
mask panel draws the band instead of the full triangle.

Exact or lossy: exact while every sequence is at most sinks + window tokens long (nothing is cut);
lossy beyond that, as the model was not trained for it; `cbtui scenario sliding_window --headless`
counts the generated tokens that differ from full attention.
"""

from __future__ import annotations

from ...attention.reference import reference_attention
from ...batch_builder import window_mask
from ..base import AttentionPlugin, SchedulerPlugin


def _positive_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    return value


class SlidingWindowPlugin(AttentionPlugin, SchedulerPlugin):
    name = "sliding_window"
    changes_outputs = True  # the CLI measures the divergence from a run without it

    def __init__(self, window: int = 32, sinks: int = 4):
        self.window = _positive_int("window", window, 1)
        self.sinks = _positive_int("sinks", sinks, 0)

    def wrap(self, layer_idx: int, attention):
        def windowed(q, k, v, batch):
            return reference_attention(q, k, v, batch, mask=window_mask(batch, self.sinks, self.window))
        return windowed

    def attention_window(self) -> list[int] | None:
        return [self.sinks, self.window]

    def describe(self) -> str:
        return (f"sliding window: {self.sinks} sink + last {self.window} keys per query "
                f"(exact up to {self.sinks + self.window} tokens)")
