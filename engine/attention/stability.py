"""Why attention's softmax needs guards: cases where the textbook softmax breaks in low precision and
the reference backend's `stable_softmax` does not, with the figures (`cbtui stability`).

The textbook form, exp(s) / sum(exp(s)) with masked scores set to -inf, fails three ways:
  - overflow: exp(s) is inf once s > ln(max float): 11.1 in float16 (max 65504), 88.7 in bfloat16
    and float32. Subtracting each row's max first makes every exp at most 1.
  - a long context: exp of moderate scores is fine one by one, but thousands of them sum past the
    float16 maximum, so every weight becomes 0 (x / inf). Same cure.
  - a fully masked row (a padding row): -inf everywhere gives exp = 0, 0 / 0 = NaN. A large negative
    fill, multiplying by the mask and an eps clamp on the sum give a row of zeros instead.
Each case is computed in float16, bfloat16 and float32 and compared with float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .reference import stable_softmax

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def naive_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The textbook form: masked scores to -inf, exp, divide by the sum. No guard."""
    e = torch.exp(scores.masked_fill(~mask, float("-inf")))
    return e / e.sum(dim=-1, keepdim=True)


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    build: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # float64 scores [rows, keys], bool mask


def _peaked() -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.linspace(-4.0, 12.0, 64, dtype=torch.float64).repeat(4, 1)
    return scores, torch.ones_like(scores, dtype=torch.bool)


def _huge() -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.linspace(0.0, 100.0, 64, dtype=torch.float64).repeat(4, 1)
    return scores, torch.ones_like(scores, dtype=torch.bool)


def _long_context() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    scores = 6.0 + torch.rand((4, 8192), generator=generator, dtype=torch.float64) * 2.0
    return scores, torch.ones_like(scores, dtype=torch.bool)


def _masked_row() -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.linspace(-2.0, 2.0, 16, dtype=torch.float64).repeat(4, 1)
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask[3] = False  # a row that may see nothing (a padding row)
    return scores, mask


CASES = (
    Case("scores to 12", "one score above ln(65504) = 11.1: exp overflows float16", _peaked),
    Case("scores to 100", "scores above ln(3.4e38) = 88.7: exp overflows bfloat16 and float32", _huge),
    Case("8192 keys", "8192 scores of 6 to 8: each exp fits float16, their sum (~1.2e7) does not", _long_context),
    Case("masked row", "a row whose every key is masked: -inf everywhere, 0 / 0", _masked_row),
)


@dataclass(frozen=True)
class Outcome:
    bad: int  # weights that are inf or NaN
    error: float  # largest |weight - float64 stable weight| over the finite weights (inf: none finite)
    rows_sum_to_one: bool  # every row with a visible key sums to 1 (within the dtype's precision)
    zero_rows: int  # rows with a visible key whose weights are all 0 (their sum overflowed)

    def verdict(self) -> str:
        if self.bad:
            return f"{self.bad} weights inf/NaN"
        if self.zero_rows:
            return f"{self.zero_rows} rows all 0 (sum overflowed)"
        if not self.rows_sum_to_one:
            return "rows do not sum to 1"
        return f"ok, max error {self.error:.1e}"


@dataclass(frozen=True)
class StabilityRow:
    case: str
    dtype: str
    naive: Outcome
    stable: Outcome


def _outcome(weights: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> Outcome:
    w = weights.to(torch.float64)
    finite = torch.isfinite(w)
    error = (w - truth).abs()[finite].max().item() if finite.any() else float("inf")
    visible = mask.any(dim=-1)
    sums = w[visible].sum(dim=-1)
    tolerance = 2e-2 if weights.dtype in (torch.float16, torch.bfloat16) else 1e-5
    ok = bool(torch.isfinite(sums).all() and ((sums - 1).abs() <= tolerance).all())
    zero_rows = int((w[visible] == 0).all(dim=-1).sum().item())
    return Outcome(int((~finite).sum().item()), error, ok, zero_rows)


def stability_table() -> list[StabilityRow]:
    """Every case in every low-precision dtype, both softmaxes, against float64."""
    rows = []
    for case in CASES:
        scores, mask = case.build()
        truth = stable_softmax(scores, mask)
        for dtype in DTYPES:
            low = scores.to(dtype)
            rows.append(StabilityRow(case.name, str(dtype).removeprefix("torch."),
                                     _outcome(naive_softmax(low, mask), truth, mask),
                                     _outcome(stable_softmax(low, mask), truth, mask)))
    return rows
