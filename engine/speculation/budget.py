"""How speculation spends the token budget.

The rule: a speculating decode costs 1 + k tokens of max_tokens_per_step. Every decode's own token
comes first (the decode cap counts requests, not tokens: a decode with 4 drafts is one decode);
what the decodes leave of the budget is then spread over their drafts one level at a time (every
decode's first draft, then every decode's second, ...), before any prefill chunk. So when the
budget is tight k shrinks, evenly, and no decode is left out for another's drafts; a decode's
first drafts, the likeliest to be accepted, are the last to go. Drafts never preempt: a draft
that needs a KV block takes a free one or is not proposed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..request import Request

if TYPE_CHECKING:
    from ..policies import Reservation
    from ..scheduler import SchedulePlan


def allot_drafts(plan: SchedulePlan, wanted: Callable[[Request, int], int], kv,
                 reservation: Reservation | None, ks: dict[int, int] | None = None) -> None:
    """Gives plan.decodes their drafts from what is left of plan's budget (plan.drafts), growing
    their KV allocations to hold them. `wanted(r, most)` says how many drafts r could use, at most
    `most`; `ks` caps some requests' drafts for this step (a plugin's adaptive k)."""
    left = plan.left
    if left <= 0 or not plan.decodes:
        return
    ks = ks or {}
    want = [wanted(r, min(left, ks.get(r.id, left))) for r in plan.decodes]
    given = [0] * len(want)
    level = 1
    while left > 0 and any(w >= level for w in want):
        for i, r in enumerate(plan.decodes):
            if left == 0:
                break
            if want[i] < level:
                continue
            need = r.num_computed + 2 + given[i]  # its own token, the drafts it has, one more
            if reservation and not reservation.room(r, 1):
                want[i] = given[i]
                continue
            if need > r.kv_capacity:
                if not kv.can_allocate(r.id, need):
                    want[i] = given[i]  # no free block for it: its drafts stop here
                    continue
                kv.allocate(r.id, need)
                r.kv_capacity = kv.capacity(r.id)
            given[i] += 1
            left -= 1
            if reservation:
                reservation.took(r, 1)
        level += 1
    for r, n in zip(plan.decodes, given, strict=True):
        if n:
            plan.drafts[r] = n
            plan.draft_tokens += n
