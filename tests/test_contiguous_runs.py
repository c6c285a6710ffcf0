"""Contiguous runs (kv/contiguous_runs.py): short requests reserve one run of blocks for their whole
length at admission, long ones are paged on demand; outputs stay exact, runs are never preempted,
and a fragmented pool makes a run wait although enough blocks are free."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache

import pytest
from helpers import exact_config, run_alone, run_batched

from cbtui.render.colors import FULL
from cbtui.widgets.kv_grid import RESERVED_GLYPH, block_cells, paged_text
from engine.kv.contiguous_runs import first_run, longest_run, run_tokens
from engine.records import REASON_NO_RUN, StepRecord
from engine.records.events import step_events
from engine.records.kv_history import flat_history
from engine.records.summary import format_table
from scenarios import load_scenario
from scenarios.compare import compare

SHORT = 24  # the scenario's contiguous_up_to


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=300)


@cache
def scenario_run(variant: str | None) -> tuple[list[StepRecord], dict[int, list[int]]]:
    engine = load_scenario("layout_by_length").build_engine(variant)
    records = []
    while engine.has_unfinished():
        records.append(engine.step())
    return records, engine.outputs()


def lengths(records: list[StepRecord]) -> dict[int, int]:
    """Request id -> prompt plus max_new_tokens."""
    return {v.id: v.prompt_len + v.max_new_tokens for r in records for v in r.requests}


# -- the pieces ------------------------------------------------------------------------------------

def test_runs_are_found_lowest_first_and_measured():
    assert first_run([0, 1, 3, 4, 5, 9], 3) == 3
    assert first_run([0, 1, 3, 4, 5, 9], 2) == 0
    assert first_run([0, 2, 4], 2) is None
    assert first_run([], 1) is None
    assert longest_run([0, 1, 3, 4, 5, 9]) == 3
    assert longest_run([]) == 0
    assert run_tokens(10, 14, 24) == 24 and run_tokens(10, 15, 24) == 0 and run_tokens(1, 1, 0) == 0






# -- the engine ------------------------------------------------------------------------------------

def test_outputs_are_the_same_in_every_variant():
    outputs = {v: scenario_run(v)[1] for v in (None, "paged", "contiguous")}
    assert outputs[None] == outputs["paged"] == outputs["contiguous"]
    records, _ = scenario_run(None)
    finals = {v.id: v for r in records for v in r.requests}
    assert len(outputs[None]) == 33 and all(len(outputs[None][rid]) == finals[rid].max_new_tokens for rid in finals)


def test_short_requests_hold_runs_and_are_never_preempted_long_ones_are_paged():
    records, _ = scenario_run(None)
    size = lengths(records)
    held = {rid for r in records for rid in r.kv.runs}
    assert held == {rid for rid, n in size.items() if n <= SHORT}  # every short one, no long one
    for r in records:
        for rid in r.kv.runs:
            table = r.kv.block_tables[str(rid)]
            assert list(table) == list(range(table[0], table[0] + len(table)))  # one run
            assert len(table) * r.kv.block_size >= size[rid]  # for its whole length, from admission on
    preempted = [rid for r in records for rid in r.preempted]
    assert preempted and all(size[rid] > SHORT for rid in preempted)
    # Paged on demand, the short requests (the newest) are the usual victims.
    paged, _ = scenario_run("paged")
    assert sum(size[rid] <= SHORT for r in paged for rid in r.preempted) >= 5


def test_contiguous_everywhere_never_preempts_but_waits_for_runs_with_blocks_free():
    records, _ = scenario_run("contiguous")
    assert not any(r.preempted for r in records)
    waits = [r for r in records if r.admission_blocked is not None and r.admission_blocked.longest_run is not None
             and r.admission_blocked.blocks_free >= r.admission_blocked.blocks_needed]
    assert waits, "fragmentation never held a run back"
    rec = waits[0]
    head = rec.admission_blocked
    assert head.longest_run < head.blocks_needed
    view = next(v for v in rec.requests if v.id == head.request_id)
    assert view.reason == REASON_NO_RUN
    texts = [e.text for e in step_events(rec, None)]
    assert any(f"request {head.request_id} needs {head.blocks_needed} blocks in a row; {head.blocks_free} free, "
               f"longest run {head.longest_run}" in t for t in texts), texts


def test_the_compare_table_counts_runs_held_empty_slots_and_run_waits():
    rows = {row.label: row for row in compare(load_scenario("layout_by_length"))}
    by_length, paged, contiguous = rows["(scenario)"], rows["paged"], rows["contiguous"]
    assert by_length.outputs == paged.outputs == contiguous.outputs
    assert paged.runs == 0 and by_length.runs == 30 and contiguous.runs == 33
    assert by_length.preemptions < paged.preemptions and contiguous.preemptions == 0
    assert paged.held_empty < by_length.held_empty < contiguous.held_empty
    assert contiguous.run_waits > 0 and paged.run_waits == 0
    assert contiguous.latency_mean > 1.5 * paged.latency_mean
    header = "\n".join(format_table(list(rows.values())))
    assert "held empty" in header and "run waits" in header
    assert "held empty" not in "\n".join(format_table([paged]))  # only when some row has runs


@pytest.mark.parametrize("settings", [{}, {"overlap_steps": True}, {"decode_graphs": "on"},
                                      {"policy": "static", "static_batch_size": 3}, {"max_decode_per_step": 2},
                                      {"attention": "reference"}])
def test_runs_stay_exact_under_pressure_against_each_request_alone(settings):
    workload = [{"prompt": list(range(3 + i, 9 + i)), "max_new_tokens": 5, "arrival_step": i} for i in range(6)]
    workload += [{"prompt": list(range(40 + i, 70 + i)), "max_new_tokens": 20} for i in range(2)]
    config = exact_config(**{**dict(kv_layout="paged", block_size=4, num_blocks=24, max_tokens_per_step=32,
                                    prefill_chunk_size=8, attention="sdpa", contiguous_up_to=12), **settings})
    outputs, records, _ = run_batched(config, workload)
    records = [r for r in records if r is not None]  # overlapped: the first call returns no record
    assert any(r.kv.runs for r in records) and any(r.preempted for r in records)
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])


# -- records, dashboard, CLI -----------------------------------------------------------------------

def test_records_carry_the_runs_through_json():
    records, _ = scenario_run(None)
    rec = next(r for r in records if r.kv.runs)
    back = StepRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert back.kv.runs == rec.kv.runs and back.kv.contiguous_up_to == SHORT
    header = load_scenario("layout_by_length").header(load_scenario("layout_by_length").build_engine())
    assert " · paged+runs≤24" in header.label()


def test_the_kv_grid_draws_reserved_blocks_and_the_history_line_names_the_run():
    records, _ = scenario_run(None)
    rec = next(r for r in records if any(r.kv.tokens.get(str(rid), 0) < len(r.kv.block_tables[str(rid)]) *
                                         r.kv.block_size - r.kv.block_size for rid in r.kv.runs))
    rid = next(rid for rid in rec.kv.runs
               if rec.kv.tokens.get(str(rid), 0) < (len(rec.kv.block_tables[str(rid)]) - 1) * rec.kv.block_size)
    table = rec.kv.block_tables[str(rid)]
    cells = block_cells(rec.kv)
    assert cells[table[-1]].reserved and cells[table[-1]].owner == rid
    text = paged_text(rec.kv, width=60, rows=8, selected=rid, mode=FULL).plain
    assert RESERVED_GLYPH in text and f"reserved; runs for ≤{SHORT} tok" in text
    # An 80x24 terminal's KV panel (38 columns, 2 rows) with a block freed: the runs' count shortens
    # but stays, and the grid keeps its row.
    crowded = next(r for r in records if r.kv.freed and any(c.reserved for c in block_cells(r.kv)))
    small = paged_text(crowded.kv, width=38, rows=2, selected=None, mode=FULL).plain.splitlines()
    assert f"{RESERVED_GLYPH} runs {len(crowded.kv.runs)}" in small[1] and RESERVED_GLYPH in small[-1]
    history = flat_history(rec.kv, rid)
    assert history is not None and history.describe().startswith(f"r{rid} one run {table[0]}–{table[-1]}")
    paged, _ = scenario_run("paged")
    assert not any(c.reserved for r in paged[:20] for c in block_cells(r.kv))


def test_admission_events_name_the_reserved_run():
    records, _ = scenario_run(None)
    texts = [e.text for r in records for e in step_events(r, None)]
    assert any(", run of blocks " in t and " reserved (" in t for t in texts)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--contiguous-up-to", "-1"], "-1 is not in the range x>=0"),
    (["--contiguous-up-to", "16", "--kv-layout", "dense"], "contiguous_up_to=16 reserves runs of blocks in the paged"),
    (["--contiguous-up-to", "16", "--speculative", "ngram"], "contiguous_up_to=16 does not verify drafts"),
])
def test_bad_settings_exit_2_with_one_line(args, message):
    result = cli("scenario", "mixed_load", "--headless", "--steps", "1", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_config_refuses_what_runs_cannot_honour():
    with pytest.raises(ValueError, match="does not share prefix blocks"):
        exact_config(contiguous_up_to=8, prefix_caching=True)
    with pytest.raises(ValueError, match="runs on one device"):
        exact_config(contiguous_up_to=8, shards=2)
    assert not exact_config(contiguous_up_to=8).caches_prefixes  # the paged default turns prefix caching off


def test_the_cli_option_gives_short_requests_runs():
    result = cli("scenario", "mixed_load", "--json", "--steps", "12", "--contiguous-up-to", "4096")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(line.get("kv", {}).get("runs") for line in lines)


def test_a_fragmented_breakpoint_pauses_where_a_run_waits_with_blocks_free():
    from cbtui.run.breakpoints import Breakpoints, parse

    bp = parse("fragmented")
    assert parse("no-run") == bp and bp.spec == "fragmented"
    records, _ = scenario_run("contiguous")
    fired = [(r.step, text) for previous, r in zip([None, *records], records, strict=False)
             if (text := bp.fires(r, previous)) is not None]
    first = next(r for r in records if r.admission_blocked is not None and r.admission_blocked.longest_run is not None
                 and r.admission_blocked.blocks_free >= r.admission_blocked.blocks_needed)
    assert fired and fired[0][0] == first.step
    b = first.admission_blocked
    assert fired[0][1] == (f"request {b.request_id} waits for {b.blocks_needed} blocks in a row: {b.blocks_free} free, "
                           f"longest run {b.longest_run} (a fragmented pool)")
    assert len(fired) < sum(1 for r in records if bp.fires(r, None))  # once when it starts, not every step
    paged, _ = scenario_run("paged")
    assert not any(bp.fires(r, None) for r in paged)
    assert Breakpoints([bp]).add(parse("fragmented")) is False


def test_held_empty_is_never_negative_where_blocks_are_shared_or_evicted():
    """With prefix caching a shared block's tokens belong to every holder, and an evicted block's
    tokens stay counted: slots minus tokens would go negative, so such steps are not summed."""
    from engine.records.summary import summarize

    for name in ("shared_prefix", "kv_eviction"):
        engine = load_scenario(name).build_engine()
        records = []
        while engine.has_unfinished():
            records.append(engine.step())
        assert summarize(records).held_empty >= 0, name
