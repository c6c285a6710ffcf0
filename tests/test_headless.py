"""`cbtui scenario NAME --headless` / `--json` end to end."""

import json
import subprocess
import sys

import pytest

from engine import StepRecord
from engine.records import RunHeader
from scenarios import load_scenario


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=300)


def test_headless_lines_and_summary():
    res = cli("scenario", "mixed_load", "--headless", "--steps", "6", "--attention", "reference")
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 6 and lines[0].startswith("step    0 |")
    assert "decode" in lines[0] and "prefill" in lines[0] and "wait" in lines[0]
    assert "summary: 6 steps" in res.stdout and "mean TTFT" in res.stdout


@pytest.mark.slow
def test_json_is_a_header_then_one_record_per_line():
    res = cli("scenario", "mixed_load", "--json", "--steps", "4", "--kv-layout", "dense")
    assert res.returncode == 0, res.stderr
    first, *lines = res.stdout.splitlines()
    header = RunHeader.from_dict(json.loads(first))
    assert header.kind == "header" and header.kv_layout == "dense" and header.title == load_scenario("mixed_load").title
    assert header.label() == "random tiny · fp32 · cpu · sdpa · dense" and header.question.endswith("?")
    recs = [StepRecord.from_dict(json.loads(line)) for line in lines]
    assert [r.step for r in recs] == [0, 1, 2, 3]
    assert recs[0].kv.layout == "dense"


@pytest.mark.slow
def test_full_run_finishes_every_request():
    res = cli("scenario", "mixed_load", "--json")
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()[1:]]
    last = records[-1]
    assert last["running"] == last["waiting"] == last["pending"] == 0
    assert last["finished_total"] == len(load_scenario("mixed_load").requests)
    # A record holds the requests alive in its step: the last one, those that finished in it.
    assert {v["id"] for v in last["requests"]} == set(last["finished"])
    assert sum(len(r["finished"]) for r in records) == last["finished_total"]


@pytest.mark.slow
def test_a_headless_run_keeps_no_records():
    """Records stream through the printer and the totals; a long run's memory stays flat."""
    import gc
    import io

    from rich.console import Console

    from cbtui.run.headless import HeadlessRun
    from engine.records import StepRecord as Record

    scenario = load_scenario("mixed_load")
    engine = scenario.build_engine(device="cpu")
    run = HeadlessRun(engine, scenario.header(engine), console=Console(file=io.StringIO()))
    def records_alive() -> int:
        gc.collect()
        return sum(isinstance(o, Record) for o in gc.get_objects())

    before = records_alive()  # other tests' records (module fixtures) are not this run's
    alive = [records_alive() - before for _in_hand in run]
    assert max(alive) <= 3  # the one in hand and the totals' last, never the run's history
    assert run.totals.steps == len(alive) and run.totals.summary().complete


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["--json", "--headless"])
def test_a_reader_that_stops_early_ends_the_run_quietly(mode):
    """`cbtui scenario X --json | head -1`: a closed stdout pipe ends the run with 0 and says nothing."""
    proc = subprocess.Popen([sys.executable, "-m", "cbtui", "scenario", "mixed_load", mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline()
    proc.stdout.close()  # as head does after its line
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b""


@pytest.mark.slow
def test_headless_output_fits_80_columns():
    """Step lines, the summary and the comparison table of a [compare] scenario, at 80 columns."""
    res = cli("scenario", "static_vs_continuous", "--headless")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert steps and all(len(line) <= 80 for line in steps), max(steps, key=len)
    table = lines[lines.index("comparison (steps, TTFT and latency in scheduler steps):") + 1:]
    assert all(len(line) <= 80 for line in table), max(table, key=len)
    for column in ("steps", "TTFT min/mean/max", "padding", "ms/step"):  # every column, in one of the parts
        assert sum(column in line for line in table) == 1, column
    assert sum(line.startswith("run ") for line in table) >= 2, "the table goes on below, the run named again"
