"""The KV grid marks freed blocks from the record alone (no previous record needed)."""

from cbtui.widgets.kv_grid import block_cells
from engine import Engine, EngineConfig


def test_freed_blocks_are_marked_even_on_the_first_record():
    eng = Engine(EngineConfig(model="tiny", device="cpu", block_size=4, num_blocks=8))
    done = eng.add_request([1] * 6, max_new_tokens=1)
    live = eng.add_request([2] * 5, max_new_tokens=4)
    cells = block_cells(eng.step().kv)
    assert [c.freed_by for c in cells[:2]] == [done, done] and cells[0].owner is None
    assert cells[2].owner == live and cells[3].owner == live and 0 < cells[3].fill < 1  # 5 of 8 slots
    assert all(c.owner is None and c.freed_by is None for c in cells[4:])
