"""Recent steps, bounded, browsable while paused."""

from __future__ import annotations

from cbtui.history import History
from engine.records import StepRecord


def rec(step: int) -> StepRecord:
    record = StepRecord.__new__(StepRecord)
    record.step = step
    return record


def test_live_follows_the_newest_and_back_forward_walk_the_past():
    h = History(limit=10)
    assert h.current() is None and not h.can_go_back()
    for s in range(4):
        h.append(rec(s))
    assert h.current().step == 3 and h.live
    h.back()
    h.back()
    assert h.current().step == 1 and not h.live
    h.append(rec(4))  # new steps arriving do not move a past view
    assert h.current().step == 1
    assert h.forward() and h.current().step == 2
    assert h.forward() and h.forward() and h.live and h.current().step == 4
    assert not h.forward()
    assert [r.step for r in h.recent(3)] == [2, 3, 4]


def test_memory_is_bounded_and_a_view_that_fell_out_shows_the_oldest_kept():
    h = History(limit=5)
    for s in range(3):
        h.append(rec(s))
    h.back()
    h.back()
    assert h.current().step == 0
    for s in range(3, 20):
        h.append(rec(s))
    assert len(h) == 5
    assert h.current().step == 15
    assert h.position() == (1, 5)
    h.clear()
    assert len(h) == 0 and h.live and h.current() is None
