"""cbtui stability: the textbook softmax breaks in float16 / bfloat16 where the reference backend's
stable_softmax does not; the figures printed are these."""

import re
import subprocess
import sys

import pytest
import torch

from engine.attention.reference import stable_softmax
from engine.attention.stability import naive_softmax, stability_table


def test_the_naive_softmax_breaks_where_the_figures_say_and_the_stable_one_never_does():
    table = {(r.case, r.dtype): r for r in stability_table()}
    broken = {key: row.naive for key, row in table.items() if row.naive.verdict().split(",")[0] != "ok"}
    assert set(broken) == {("scores to 12", "float16"), ("scores to 100", "float16"), ("scores to 100", "bfloat16"),
                           ("scores to 100", "float32"), ("8192 keys", "float16"), ("masked row", "float16"),
                           ("masked row", "bfloat16"), ("masked row", "float32")}
    assert broken[("8192 keys", "float16")].zero_rows == 4 and broken[("8192 keys", "float16")].bad == 0
    assert broken[("masked row", "bfloat16")].bad == 16  # the one masked row of 16 keys: 0 / 0
    for row in table.values():
        assert row.stable.bad == 0 and row.stable.zero_rows == 0 and row.stable.rows_sum_to_one
        assert row.stable.error < 2e-2


def test_a_fully_masked_row_is_zeros_even_in_float16():
    scores = torch.zeros((2, 4), dtype=torch.float16)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    weights = stable_softmax(scores, mask)
    assert weights.tolist() == [[0.5, 0.5, 0.0, 0.0], [0.0] * 4]
    assert torch.isnan(naive_softmax(scores, mask)[1]).all()


@pytest.mark.slow
def test_the_command_prints_the_table():
    res = subprocess.run([sys.executable, "-m", "cbtui", "stability"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    cells = {tuple(parts[:2]): parts[2:] for line in res.stdout.splitlines()
             if len(parts := re.split(r"\s{2,}", line.strip())) == 4}
    assert cells[("scores to 12", "float16")] == ["16 weights inf/NaN", "ok, max error 4.0e-04"]
    assert cells[("8192 keys", "float16")][0] == "4 rows all 0 (sum overflowed)"
    assert cells[("masked row", "bfloat16")][0] == "16 weights inf/NaN"
    assert all(stable.startswith("ok, max error") for _, stable in cells.values()
               if stable != "stable (reference backend)")
