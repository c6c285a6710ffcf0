"""Recent steps, bounded, browsable while paused."""

from __future__ import annotations

import pytest

from cbtui.run.history import History
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


# -- compact past steps, and paging from the file the run is written to ------------------------

import gc  # noqa: E402 - grouped with the tests that use it
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from dashboard_helpers import make_app, shown_step, wait_until  # noqa: E402

from engine.records.recording import load_recording, open_recording  # noqa: E402
from engine.records.step_lines import RecordingWriter  # noqa: E402
from scenarios import load_scenario  # noqa: E402


def real_records(count: int, name: str = "mixed_load"):
    engine = load_scenario(name).build_engine(device="cpu")
    for _ in range(count):
        if not engine.has_unfinished():
            return
        yield engine.step()


def tracked_growth(history: History, records) -> int:
    gc.collect()
    before = len(gc.get_objects())
    for record in records:
        history.append(record)
    gc.collect()
    return len(gc.get_objects()) - before


def test_steps_past_the_newest_few_are_kept_packed_and_come_back_equal():
    records = list(real_records(30))
    wanted = [r.to_dict() for r in records]
    h = History(limit=1000, hot=8)
    for record in records:
        h.append(record)
    for _ in range(len(records) - 1):
        h.back()
    assert h.current().step == records[0].step and h.position() == (1, len(records))
    assert h.current() is not records[0]  # unpacked, not the object that came in
    assert h.current().to_dict() == wanted[0]
    assert [r.to_dict() for r in h.recent(3)] == wanted[:1]
    assert h.forward() and h.current().to_dict() == wanted[1]


@pytest.mark.slow
def test_a_long_history_holds_no_more_objects_for_the_collector_than_a_short_one():
    """Packed steps are bytes, which the garbage collector never walks: a window of 1,000 steps costs
    its full passes what the newest `hot` cost."""
    steps = 50
    short = tracked_growth(History(limit=8, hot=8), real_records(steps))
    long = tracked_growth(History(limit=1000, hot=8), real_records(steps))
    assert long < short * 1.3 + 500, (short, long)


def write_run(path, count: int, name: str = "mixed_load") -> list:
    scenario = load_scenario(name)
    engine = scenario.build_engine(device="cpu")
    writer = RecordingWriter(path)
    writer.start(scenario.header(engine, None))
    records = []
    for record in real_records(count, name):
        writer.write(record)
        records.append(record)
    return records, writer


def test_history_pages_steps_older_than_its_window_from_the_recording_being_written(tmp_path):
    records, writer = write_run(tmp_path / "run.jsonl", 30)
    h = History(limit=5, pages=writer.lines)
    for record in records:
        h.append(record)
    assert len(h) == 5 and h.position() == (30, 30)
    steps = [h.current().step]
    while h.can_go_back():
        h.back()
        steps.append(h.current().step)
    assert steps == [r.step for r in reversed(records)]  # every step, back to the first
    assert h.position() == (1, 30)
    assert h.current().to_dict() == records[0].to_dict()
    assert [r.step for r in h.recent(4)] == [records[0].step]
    h.forward()
    assert [r.step for r in h.recent(2)] == [records[0].step, records[1].step]
    writer.close()
    # The file is a recording like any --json run: a replay reads the same records.
    assert [r.to_dict() for r in load_recording(tmp_path / "run.jsonl").records] == [r.to_dict() for r in records]


def test_a_replay_reads_old_steps_back_from_its_file(tmp_path):
    records, writer = write_run(tmp_path / "run.jsonl", 12)
    writer.close()
    replay = open_recording(tmp_path / "run.jsonl")
    run = replay.run()
    seen = [run.step() for _ in range(12)]
    assert replay.first_step() == seen[0].step
    assert replay.read(seen[5].step).to_dict() == records[5].to_dict()
    assert replay.read(10_000) is None


def test_a_recording_cut_under_the_reader_shows_the_oldest_kept_step(tmp_path):
    records, writer = write_run(tmp_path / "run.jsonl", 10)
    writer.close()
    h = History(limit=3, pages=writer.lines)
    for record in records:
        h.append(record)
    (tmp_path / "run.jsonl").write_text("")  # someone emptied the file
    for _ in range(9):
        h.back()
    assert h.current().step == records[-3].step  # what memory still has


def test_the_dashboard_walks_back_past_its_window_when_recording(tmp_path):
    import asyncio

    scenario = load_scenario("mixed_load")
    writer = RecordingWriter(tmp_path / "live.jsonl")
    app = make_app(paused=True, history_limit=3, recording=writer)
    writer.start(scenario.header(scenario.build_engine(device="cpu"), None))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            for _ in range(8):
                await pilot.press("n")
            await wait_until(pilot, lambda: shown_step(app) == 8)
            assert len(app.history) == 3
            for _ in range(8):
                await pilot.press("left")
            assert shown_step(app) == 0
            assert app.check_action("history_back", ()) is None
    asyncio.run(drive())
    writer.close()
    replay = load_recording(tmp_path / "live.jsonl")
    assert [r.step for r in replay.records] == list(range(9))
    assert replay.title == f"Replay: {scenario.title}"  # the header the run was started with


def cli(*args, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_record_flag_writes_what_json_prints(tmp_path):
    out = tmp_path / "r.jsonl"
    done = cli("scenario", "mixed_load", "--headless", "--steps", "6", "--record", str(out))
    assert done.returncode == 0, done.stderr
    printed = cli("scenario", "mixed_load", "--json", "--steps", "6").stdout.splitlines()
    written = out.read_text().splitlines()
    assert len(written) == 7
    drop = ("wall_time_s", "record_time_s", "device_time_s", "memory")
    strip = [{k: v for k, v in json.loads(line).items() if k not in drop} for line in written]
    assert strip == [{k: v for k, v in json.loads(line).items() if k not in drop} for line in printed]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["dir", "missing"])
def test_record_to_a_bad_path_is_one_line_and_exit_2(tmp_path, where):
    path = tmp_path if where == "dir" else tmp_path / "nowhere" / "r.jsonl"
    done = cli("scenario", "mixed_load", "--headless", "--steps", "2", "--record", str(path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--record" in done.stderr and "Traceback" not in done.stderr
