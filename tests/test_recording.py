"""Recordings: what `cbtui scenario NAME --json` writes, read back exactly, checked line by line,
and replayed in the dashboard without an engine."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from dashboard_helpers import header_text, shown_step, wait_until
from helpers import CPP_DECODE, fuzz_examples
from hypothesis import given, settings
from hypothesis import strategies as st
from textual.color import Color

from cbtui.apps.dashboard import DashboardApp
from cbtui.render.colors import FULL, NONE, SIXTEEN
from cbtui.widgets.budget import demand_line, split_cells
from cbtui.widgets.kv_grid import dense_text, paged_text
from cbtui.widgets.mask import mask_strips
from cbtui.widgets.memory_panel import step_memory_text
from cbtui.widgets.requests_table import row_cells
from engine.profiling.gpu_memory import RecordedProbe
from engine.records.record_line import parse_record
from engine.records.recording import RecordedRun, RecordingError, load_recording
from scenarios import load_scenario


def recorded_lines(name: str = "kv_pressure") -> list[str]:
    """A whole run's records as `--json` prints them (cbtui/run/headless.py: json.dumps(record.to_dict()))."""
    engine = load_scenario(name).build_engine(device="cpu")
    lines = []
    while engine.has_unfinished():
        lines.append(json.dumps(engine.step().to_dict()))
    return lines


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return recorded_lines()


def write(tmp_path, lines: list[str], end: str = "\n"):
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(lines) + end)
    return path


def test_a_recording_reads_back_every_record_exactly(tmp_path, lines):
    recording = load_recording(write(tmp_path, lines))
    assert [json.dumps(r.to_dict()) for r in recording.records] == lines
    assert any(r.preempted for r in recording.records)  # kv_pressure: the hard case is in there
    run = RecordedRun(recording.records)
    assert run.header().label() == "cpu · paged" and run.header().policy == "fcfs"  # no header line: what records say
    steps = []
    while run.has_unfinished():
        steps.append(run.step().step)
    assert steps == list(range(len(lines)))
    assert recording.title == "Replay: run.jsonl" and f"{len(lines)} StepRecords" in recording.description


@pytest.mark.slow
def test_the_cli_records_what_replay_reads(tmp_path):
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "mixed_load", "--json", "--steps", "5"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    path = tmp_path / "run.jsonl"
    path.write_text(res.stdout)
    assert [r.step for r in load_recording(path).records] == [0, 1, 2, 3, 4]


def first_error(tmp_path, lines, end="\n") -> str:
    with pytest.raises(RecordingError) as raised:
        load_recording(write(tmp_path, lines, end))
    message = str(raised.value)
    assert "\n" not in message
    return message


def edited(line: str, edit) -> str:
    data = json.loads(line)
    edit(data)
    return json.dumps(data)


@pytest.mark.slow
def test_a_bad_line_is_named_with_its_field(tmp_path, lines):
    path = tmp_path / "run.jsonl"
    bad = edited(lines[3], lambda d: d["requests"][1].update(generated=-3))
    assert first_error(tmp_path, [lines[0], bad]) == (
        f"{path}:2: not a StepRecord: requests[1].generated=-3 must be an integer >= 0; "
        f"record one with: cbtui scenario NAME --json > FILE")
    cases = [
        (lambda d: d.pop("kv"), "missing field 'kv'"),
        (lambda d: d["items"][0].update(colour=1), "items[0]: unknown field 'colour'"),
        (lambda d: d.update(budget=True), "budget=True must be an integer >= 0"),
        (lambda d: d.update(decode_cap="x"), "decode_cap='x' must be an integer >= 0"),
        (lambda d: d.update(wall_time_s=None), "wall_time_s must be a number from 0 to 2**53"),
        (lambda d: d["kv"]["block_tables"].update(x=[1]), "kv.block_tables: key 'x' is not a request id"),
        (lambda d: d["sampled"].update({"²": 1}), "sampled: key '²' is not a request id"),
        (lambda d: d["kv"]["block_tables"].update({"0": [1, "a"]}), "kv.block_tables[0] must be a list of integers"),
        (lambda d: d["kv"]["block_tables"].update({"0": [10**6]}),
         "kv.block_tables[0]: a block number is not below num_blocks=20"),
        (lambda d: d["kv"]["prefix"].update(cached=[20]),
         "kv.prefix.cached: a block number is not below num_blocks=20"),
        (lambda d: d["items"][0].update(key_len=999), "items[0]: key_len must be first_pos + num_tokens"),
        (lambda d: d["kv"].update(num_blocks=10**9), "kv.num_blocks=1000000000 is more than"),
        (lambda d: d["memory"].update(source="tpu"), "memory.source='tpu' must be 'cuda' or 'rss'"),
    ]
    for edit, expected in cases:
        message = first_error(tmp_path, [edited(lines[3], edit)])
        assert f"{path}:1: not a StepRecord: {expected}" in message, message
    # A priority may be negative: that record is fine.
    assert load_recording(write(tmp_path, [edited(lines[3], lambda d: d["requests"][0].update(priority=-2))]))


def test_bad_files_give_one_line_each(tmp_path, lines):
    path = tmp_path / "run.jsonl"
    assert first_error(tmp_path, [lines[0], "not json", lines[2]]).startswith(f"{path}:2: not a StepRecord: not JSON")
    assert first_error(tmp_path, [lines[2], lines[1]]) == (
        f"{path}:2: step 1 comes after step 2; a recording holds one run, its steps in order")
    assert first_error(tmp_path, ["", "  "]).startswith(f"{path}: holds no StepRecords")
    assert "nested too deeply" in first_error(tmp_path, ["[" * 100_000 + "]" * 100_000])
    assert first_error(tmp_path, ["[1, 2]"]) == (
        f"{path}:1: not a StepRecord: the line must be an object; record one with: cbtui scenario NAME --json > FILE")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(RecordingError, match="not UTF-8"):
        load_recording(path)
    with pytest.raises(RecordingError, match="cannot read the file"):
        load_recording(tmp_path / "missing.jsonl")


def test_a_last_line_cut_short_is_left_out_and_said(tmp_path, lines):
    """A recording whose writer was killed mid-line keeps every whole step before it."""
    recording = load_recording(write(tmp_path, lines[:5] + [lines[5][:40]], end=""))
    assert [r.step for r in recording.records] == [0, 1, 2, 3, 4]
    assert "last line (line 6) was cut short" in recording.description
    # A newline after it (a writer restarted after the kill) does not make it whole: still a cut.
    recording = load_recording(write(tmp_path, lines[:5] + [lines[5][:40], "", ""]))
    assert [r.step for r in recording.records] == [0, 1, 2, 3, 4]
    assert "last line (line 6) was cut short" in recording.description
    # Not JSON with a record after it is no cut: an error naming the line.
    assert ":6: not a StepRecord: not JSON" in first_error(tmp_path, lines[:5] + [lines[5][:40], lines[6]])


def test_cli_replay_of_a_bad_file_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 0}\n')
    res = subprocess.run([sys.executable, "-m", "cbtui", "replay", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"cbtui: error: {path}:1: not a StepRecord: missing field "
                                               f"'policy'; record one with: cbtui scenario NAME --json > FILE"]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats() | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                       max_size=3),
                           max_leaves=6)


def leaves(value, path=()):
    if isinstance(value, dict):
        for key, element in value.items():
            yield from leaves(element, path + (key,))
    elif isinstance(value, list) and value:
        for i, element in enumerate(value):
            yield from leaves(element, path + (i,))
    yield path


@pytest.mark.slow
@settings(max_examples=fuzz_examples(300), deadline=None)
@given(data=st.data())
def test_a_record_either_fails_its_check_or_every_panel_draws_it(lines, data):
    """Any one value of a real record replaced by any JSON value: a clear ValueError, or a record
    the panels draw without raising (a replay never dies with a traceback mid-run)."""
    line = lines[data.draw(st.integers(0, len(lines) - 1))]
    record = json.loads(line)
    paths = list(leaves(record))
    path = data.draw(st.sampled_from(paths[:-1]))  # not the whole record
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JSON_VALUES)
    try:
        parsed = parse_record(json.dumps(record))
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    split_cells(38, parsed.decode_tokens, parsed.prefill_tokens, parsed.budget)
    demand_line(parsed)
    for mode in (FULL, SIXTEEN, NONE):  # colour, and the glyphs drawn where colour fails
        mask_strips(parsed.items, width=38, height=10, background=Color(0, 0, 0), selected=0, mode=mode)
        (paged_text(parsed.kv, 38, 4, 0, mode) if parsed.kv.layout == "paged" else
         dense_text(parsed.kv, 38, 4, 0, mode))
        for view in parsed.requests:
            row_cells(view, mode)
    step_memory_text(parsed.memory)


def test_the_dashboard_replays_a_recording_with_its_own_memory_figures(tmp_path, lines):
    recording = load_recording(write(tmp_path, lines))
    records = recording.records

    async def scenario():
        app = DashboardApp(recording, RecordedRun(records), rebuild=lambda: RecordedRun(records), paused=True,
                           speed=float("inf"), recorded=True, memory_poll_s=3600.0)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: "Step 0" in header_text(app))
            assert isinstance(app._probe, RecordedProbe)
            assert "Replay: run.jsonl" in header_text(app) and "recorded · cpu · paged" in header_text(app)
            for expected in (1, 2, 3):
                await pilot.press("n")
                await wait_until(pilot, lambda expected=expected: shown_step(app) == expected)
            assert app.history.current() is records[3]  # the record as read, nothing recomputed
            await pilot.press("left")
            assert shown_step(app) == 2
            await pilot.press("r")  # starts the replay over, still paused
            await wait_until(pilot, lambda: shown_step(app) == 0)
            assert len(app.history) == 1 and app.paused and app.history.current() is records[0]
            await pilot.press("space")  # resume, to the end of the recording
            await wait_until(pilot, lambda: app.engine_state == "finished")
            assert shown_step(app) == records[-1].step
            # The memory profile is the recorded run's, step by step, not this process's.
            assert app.memory_profile.series("rss") == [(r.step, r.memory.rss_bytes) for r in records]
            assert app.memory_profile.sources == []
            await pilot.press("q")
    asyncio.run(scenario())


def test_a_recording_carries_its_run_header(tmp_path):
    """--json starts with the run header: a replay shows the scenario's title, help and settings."""
    import subprocess
    import sys

    from scenarios import load_scenario

    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "kv_pressure", "--json", "--steps", "5"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    path = tmp_path / "run.jsonl"
    path.write_text(res.stdout)
    recording = load_recording(path)
    scenario = load_scenario("kv_pressure")
    assert len(recording.records) == 5 and recording.header is not None
    assert recording.title == f"Replay: {scenario.title}" and recording.question == scenario.question
    assert recording.description.startswith(scenario.description)
    label = RecordedRun(recording.records, recording.header).header().label()
    assert label == "random tiny · fp32 · cpu · sdpa · paged" + CPP_DECODE
    bad = res.stdout.replace('"kind": "header"', '"kind": "header", "nonsense": 1', 1)
    path.write_text(bad)
    with pytest.raises(RecordingError, match="run.jsonl:1: not a run header: unknown field 'nonsense'"):
        load_recording(path)


# -- the story the records tell together (issue #14, item 12) -----------------------------------

STORY_WORDS = {"refinish": "finishes again", "share": "is held by requests", "twice": "twice",
               "regress": "fewer than", "reschedule": "which finished at step", "backwards": "comes after step"}


def story_edits(records: list[dict]) -> dict[str, list[int]]:
    """For each kind of story error, the positions in `records` (one run, in order) where it can be made."""
    finished_before = [set()]
    for r in records:
        finished_before.append(finished_before[-1] | set(r["finished"]))
    at: dict[str, list[int]] = {kind: [] for kind in STORY_WORDS}
    for i, r in enumerate(records):
        tables = [t for t in r["kv"]["block_tables"].values() if t]
        if finished_before[i]:
            at["refinish"].append(i)
        if len(tables) >= 2:
            at["share"].append(i)
        if tables:
            at["twice"].append(i)
        if i and any(v["generated"] for v in records[i - 1]["requests"]):
            at["regress"].append(i)
        if finished_before[i] and r["items"]:
            at["reschedule"].append(i)
        if i:
            at["backwards"].append(i)
    return at


def make_story_error(records: list[dict], i: int, kind: str, draw) -> None:
    """Edits records[i] so that it contradicts the records before it in the way `kind` says."""
    r = records[i]
    done = sorted(set().union(*(set(x["finished"]) for x in records[:i])))
    if kind == "refinish":
        r["finished"].append(draw(st.sampled_from(done)))
    elif kind == "share":
        tables = [t for t in r["kv"]["block_tables"].values() if t]
        tables[1].append(draw(st.sampled_from(tables[0])))
    elif kind == "twice":
        table = draw(st.sampled_from([t for t in r["kv"]["block_tables"].values() if t]))
        table.append(draw(st.sampled_from(table)))
    elif kind == "regress":
        before = draw(st.sampled_from([v for v in records[i - 1]["requests"] if v["generated"]]))
        view = next((v for v in r["requests"] if v["id"] == before["id"]), None)
        if view is None:
            r["requests"].append(view := dict(before))
        view["generated"] = before["generated"] - 1
    elif kind == "reschedule":
        r["items"][0]["request_id"] = draw(st.sampled_from(done))
    else:  # backwards
        r["step"] = draw(st.integers(0, records[i - 1]["step"]))


@settings(max_examples=fuzz_examples(120), deadline=None)
@given(data=st.data())
def test_records_that_contradict_the_run_are_named_by_line(tmp_path_factory, lines, data):
    """Any in-order selection of a real run's records reads back whole; the same with one record
    made to contradict those before it (a request finishing twice or scheduled after finishing, a
    KV block held by two requests or twice by one, a generated count going down, a step going
    back) fails with one line naming that line and what it contradicts."""
    chosen = sorted(data.draw(st.sets(st.integers(0, len(lines) - 1), min_size=2, max_size=len(lines))))
    records = [json.loads(lines[i]) for i in chosen]
    path = write(tmp_path_factory.mktemp("story"), [json.dumps(r) for r in records])
    assert [r.step for r in load_recording(path).records] == [r["step"] for r in records]
    edits = {kind: at for kind, at in story_edits(records).items() if at}
    kind = data.draw(st.sampled_from(sorted(edits)))
    i = data.draw(st.sampled_from(edits[kind]))
    make_story_error(records, i, kind, data.draw)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(RecordingError) as raised:
        load_recording(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path}:{i + 1}: ")
    assert STORY_WORDS[kind] in message, (kind, message)


def test_story_errors_say_what_and_where(tmp_path, lines):
    path = tmp_path / "run.jsonl"
    records = [json.loads(line) for line in lines]
    done = next(i for i, r in enumerate(records) if r["finished"])
    rid = records[done]["finished"][0]
    again = edited(lines[done + 1], lambda d: d["finished"].append(rid))
    assert first_error(tmp_path, lines[:done + 1] + [again]) == (
        f"{path}:{done + 2}: step {done + 1}: request {rid} finishes again (it finished at step {done})")
    shared = next(r for r in records if len([t for t in r["kv"]["block_tables"].values() if t]) >= 2)
    (a, ta), (b, tb) = [(k, t) for k, t in shared["kv"]["block_tables"].items() if t][:2]
    tb.append(ta[0])
    assert first_error(tmp_path, [json.dumps(shared)]) == (
        f"{path}:1: step {shared['step']}: KV block {ta[0]} is held by requests {a} and {b} at once")
    grown = next(i for i, r in enumerate(records) if any(v["generated"] > 1 for v in r["requests"]))
    view = next(v for v in records[grown]["requests"] if v["generated"] > 1)
    fewer = edited(lines[grown + 1], lambda d: next(v for v in d["requests"] if v["id"] == view["id"]).update(
        generated=view["generated"] - 1))
    assert first_error(tmp_path, [lines[grown], fewer]) == (
        f"{path}:2: step {grown + 1}: request {view['id']} has generated={view['generated'] - 1}, fewer than the "
        f"{view['generated']} it had in the step before")


def test_lines_split_on_newline_only(tmp_path, lines):
    """A raw U+2028 (or U+0085, a form feed) inside a JSON string is text: json.dumps writes it raw
    with ensure_ascii=False, and str.splitlines would cut the record in two."""
    data = json.loads(lines[1])
    data["annotations"] = ["line\u2028separator \x85 next \x0c feed"]
    path = tmp_path / "run.jsonl"
    path.write_bytes("\r\n".join([lines[0], json.dumps(data, ensure_ascii=False), lines[2]]).encode())
    recording = load_recording(path)
    assert [r.step for r in recording.records] == [0, 1, 2]
    assert recording.records[1].annotations == data["annotations"]
