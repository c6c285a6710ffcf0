"""Speculative decoding in words, from records only: the step's event line and a request's count."""

from __future__ import annotations

from engine.records import RequestView, StepRecord


def speculation_note(record: StepRecord, selected: int | None = None) -> tuple[str, ...]:
    """'request 3: 3 of 4 drafts accepted' for the selected request if it speculated this step, else
    the first that did; with more, the step's totals too. () when nothing speculated."""
    speculating = [i for i in record.items if i.drafts]
    if not speculating:
        return ()
    shown = next((i for i in speculating if i.request_id == selected), speculating[0])
    note = f"request {shown.request_id}: {shown.accepted} of {shown.drafts} drafts accepted"
    if len(speculating) > 1:
        note += (f" (step: {sum(i.accepted for i in speculating)} of {sum(i.drafts for i in speculating)}, "
                 f"{len(speculating)} requests)")
    return (note,)


def drafts_cell(view: RequestView) -> str:
    """A request's drafts so far for the table's drafts column, accepted/proposed ('' when it never
    speculated)."""
    return f"{view.drafts_accepted}/{view.drafts_proposed}" if view.drafts_proposed else ""
