"""The requests table's prompt and gen cells ('done/total') in their 7 columns: exact when they fit,
in thousands when not, never cut (a max_tokens of 3000 from an API client read '850/300')."""

from __future__ import annotations

import pytest

from cbtui.render.formatting import count_of
from cbtui.widgets.requests_table import COLUMNS


@pytest.mark.parametrize("done, total, shown", [(10, 10, "10/10"), (72, 200, "72/200"), (999, 999, "999/999"),
                                                (850, 3000, "850/3k"), (1234, 3000, "1234/3k"),
                                                (2500, 4096, "2500/4k"), (12345, 20000, "12k/20k")])
def test_a_count_fits_its_column_whole(done, total, shown):
    width = dict((key, w) for key, _, w in COLUMNS)["gen"]
    assert count_of(done, total, width) == shown and len(shown) <= width
