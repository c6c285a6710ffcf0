"""What one system did on one workload, and the figures the table shows."""

from __future__ import annotations

from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


PERCENTILES = (50, 90, 99)


@dataclass
class RunResult:
    system: str
    available: bool = True
    note: str = ""  # why it is unavailable, or how it was configured
    wall_s: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    steps: int | None = None
    ttft_s: list[float] = field(default_factory=list)  # per request
    tpot_s: list[float] = field(default_factory=list)  # per request with >= 2 output tokens
    outputs: list[list[int]] = field(default_factory=list)  # in workload order
    record_share: float | None = None  # ours: share of step time spent building StepRecords
    step_time: dict = field(default_factory=dict)  # ours: {"decode-only": {"steps", "seconds"}, ...}
    speculation: dict | None = None  # ours, speculating: drafts proposed, accepted, acceptance rate

    @property
    def output_tok_s(self) -> float | None:
        return self.output_tokens / self.wall_s if self.available and self.wall_s > 0 else None

    @property
    def total_tok_s(self) -> float | None:
        total = self.prompt_tokens + self.output_tokens
        return total / self.wall_s if self.available and self.wall_s > 0 else None

    def summary(self) -> dict:
        """The figures of this run alone (bench.run.combine adds those paired with ours continuous)."""
        def ms(xs: list[float]) -> dict[str, float | None]:
            return {f"p{q}": None if (p := percentile(xs, q)) is None else 1000 * p for q in PERCENTILES}

        out = {"system": self.system, "available": self.available, "note": self.note}
        if not self.available:
            return out
        out.update(output_tok_s=self.output_tok_s, total_tok_s=self.total_tok_s, ttft_ms=ms(self.ttft_s),
                   tpot_ms=ms(self.tpot_s), steps=self.steps, wall_s=self.wall_s,
                   prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens)
        if self.record_share is not None:
            out["record_share"] = self.record_share
        if self.step_time:
            out["step_time"] = self.step_time
        if self.speculation is not None:
            out["speculation"] = self.speculation
        return out
