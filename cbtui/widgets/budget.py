"""The token budget of one step: decode (and its speculative drafts), prefill and unused, and decode
demand against its cap."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.records import StepRecord

from ..render.colors import BAD, DECODE_COLOR, GOOD, PREFILL_COLOR, UNUSED_COLOR, WARN
from ..render.formatting import first_that_fits

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


def demand_line(record: StepRecord, width: int = 80) -> Text:
    demand, cap, budget = record.decode_demand, record.decode_cap, record.budget
    limit = budget if cap is None else min(cap, budget)
    limit_name = "budget" if cap is None or budget < cap else "cap"
    ran = record.decode_tokens - min(record.draft_tokens, record.decode_tokens)  # decodes (requests), not drafts
    if demand > limit:
        verdict = (f" > {limit_name} {limit}: {demand - limit} wait", f"bold {BAD}")
    elif ran < demand:  # within the limit, yet not all ran: evicted for KV blocks, or a reserved slice
        why = "preempted" if record.preempted else "waited"
        verdict = (f": {demand - ran} {why}, {ran} ran", f"bold {BAD}")
    else:
        verdict = (f" ≤ {limit_name} {limit}: all ran", GOOD)
    return first_that_fits(width, Text.assemble(("decode demand ", "dim"), str(demand), verdict),
                           Text.assemble(("demand ", "dim"), str(demand), verdict))


def numbers_line(rec: StepRecord, width: int) -> Text:
    """The three parts with their glyphs (decode with its speculative drafts: 'decode 6+▒8'); closer
    together, then without labels, rather than cut."""
    drafts = min(rec.draft_tokens, rec.decode_tokens)  # a recording from outside may say anything
    parts = ((DECODE_GLYPH, DECODE_COLOR, "decode", rec.decode_tokens - drafts),
             (PREFILL_GLYPH, PREFILL_COLOR, "prefill", rec.prefill_tokens),
             (UNUSED_GLYPH, UNUSED_COLOR, "unused", rec.unused_tokens))

    def form(gap: str, labels: bool) -> Text:
        texts = [Text.assemble((glyph, color.hex), f" {name} " if labels else " ", (str(n), "bold"))
                 for glyph, color, name, n in parts]
        if drafts:
            texts[0].append_text(Text.assemble("+", (DRAFT_GLYPH, DECODE_COLOR.hex), (str(drafts), "bold")))
        return Text(gap).join(texts)
    return first_that_fits(width, form("  ", True), form(" ", True), form("  ", False))


class BudgetBar(Static):
    """Three lines; a static batch adds a fourth, its padding (the slots finished requests hold)."""

    DEFAULT_CSS = """
    BudgetBar { height: 3; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._record: StepRecord | None = None

    def show(self, record: StepRecord | None) -> None:
        self._record = record
        lines = 4 if record is not None and record.policy == "static" else 3
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines
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
        lines = [bar, numbers_line(rec, width), demand_line(rec, width)]
        if rec.policy == "static":
            slots = rec.padding_slots
            lines.append(first_that_fits(
                width, Text.assemble(("padding ", WARN), (str(slots), f"bold {WARN}"),
                                     (" slots held by finished requests", WARN)),
                Text.assemble(("padding ", WARN), (str(slots), f"bold {WARN}"), (" slots (finished)", WARN))))
        for line in lines:
            line.no_wrap, line.overflow = True, "ellipsis"
        return Text("\n").join(lines)
