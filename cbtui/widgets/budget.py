"""The token budget of one step: decode (and its speculative drafts), prefill and unused, and decode
demand against its cap."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.records import StepRecord

from ..colors import DECODE_COLOR, PREFILL_COLOR, UNUSED_COLOR

# Distinct glyphs as well as colours, so the split reads without colour too.
DECODE_GLYPH, PREFILL_GLYPH, UNUSED_GLYPH = "█", "▓", "░"
DRAFT_GLYPH = "▒"  # speculative drafts: part of the decode tokens


def split_cells(width: int, decode: int, prefill: int, budget: int) -> tuple[int, int, int]:
    """Cells for decode, prefill and unused; any non-zero part gets at least one cell."""
    if budget <= 0 or width <= 0:
        return 0, 0, max(width, 0)
    d = round(width * decode / budget)
    p = round(width * (decode + prefill) / budget) - d
    if decode and not d:
        d = 1
    if prefill and not p:
        p = 1
    d, p = min(d, width), min(p, max(width - d, 0))
    return d, p, width - d - p


def demand_line(record: StepRecord) -> Text:
    demand, cap, budget = record.decode_demand, record.decode_cap, record.budget
    limit = budget if cap is None else min(cap, budget)
    limit_name = "budget" if cap is None or budget < cap else "cap"
    text = Text.assemble(("decode demand ", "dim"), str(demand))
    ran = record.decode_tokens - min(record.draft_tokens, record.decode_tokens)  # decodes (requests), not drafts
    if demand > limit:
        text.append(f" > {limit_name} {limit}: {demand - limit} wait", style="bold red")
    elif ran < demand:  # within the limit, yet not all ran: evicted for KV blocks, or a reserved slice
        why = "preempted" if record.preempted else "waited"
        text.append(f": {demand - ran} {why}, {ran} ran", style="bold red")
    else:
        text.append(f" ≤ {limit_name} {limit}: all ran", style="green")
    return text


class BudgetBar(Static):
    DEFAULT_CSS = """
    BudgetBar { height: 3; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._record: StepRecord | None = None

    def show(self, record: StepRecord | None) -> None:
        self._record = record
        self.refresh()

    def render(self) -> Text:
        rec = self._record
        if rec is None:
            return Text("no step yet", style="dim")
        width = max(self.size.width, 1)
        d, p, u = split_cells(width, rec.decode_tokens, rec.prefill_tokens, rec.budget)
        drafts = min(rec.draft_tokens, rec.decode_tokens)  # a recording from outside may say anything
        own, draft_cells, _ = split_cells(d, rec.decode_tokens - drafts, drafts, rec.decode_tokens)
        bar = Text.assemble((DECODE_GLYPH * own, DECODE_COLOR.hex), (DRAFT_GLYPH * (d - own), DECODE_COLOR.hex),
                            (PREFILL_GLYPH * p, PREFILL_COLOR.hex),
                            (UNUSED_GLYPH * u, UNUSED_COLOR.hex))
        gap = " " if drafts else "  "  # with drafts the line holds one more figure: single gaps fit 38 columns
        numbers = Text.assemble((DECODE_GLYPH, DECODE_COLOR.hex), " decode ", (str(rec.decode_tokens - drafts), "bold"))
        if drafts:
            numbers.append_text(Text.assemble("+", (DRAFT_GLYPH, DECODE_COLOR.hex), (str(drafts), "bold")))
        numbers.append_text(Text.assemble(
            gap, (PREFILL_GLYPH, PREFILL_COLOR.hex), " prefill ", (str(rec.prefill_tokens), "bold"), gap,
            (UNUSED_GLYPH, UNUSED_COLOR.hex), " unused ", (str(rec.unused_tokens), "bold"),
        ))
        if rec.policy == "static" and rec.padding_slots:
            numbers.append(f"  padding slots {rec.padding_slots}", style="yellow")
        lines = [bar, numbers, demand_line(rec)]
        for line in lines:
            line.no_wrap, line.overflow = True, "ellipsis"
        return Text("\n").join(lines)
