"""Recordings someone sent you are safe to open (issue #14): `cbtui replay` and `cbtui trace` read
only regular files, a bounded line at a time and only as far as they need; a bad file is one line
and exit code 2, never a traceback, and never costs a good output file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dashboard_helpers import DATA, header_text, shown_step, wait_until

from cbtui.apps.dashboard import DashboardApp
from engine.records import recording as recording_module
from engine.records.recording import RecordingError, load_recording, open_recording

HOW = "record one with: cbtui scenario NAME --json > FILE"
GOOD = (DATA / "mixed_load.jsonl").read_text().splitlines()  # a header line, then eight records


# `python -m cbtui`, writing its peak resident memory (VmHWM, kB) to $HWM_OUT as it exits. Not
# getrusage: a child's ru_maxrss starts from the forking process's (pytest's, with torch loaded).
CLI_MEASURED = """
import atexit, os, runpy, sys
def peak():
    with open("/proc/self/status") as status, open(os.environ["HWM_OUT"], "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM")))
atexit.register(peak)
sys.argv[0] = "cbtui"
runpy.run_module("cbtui", run_name="__main__", alter_sys=True)
"""


def run_cli(*args: str, timeout: float = 60, tmp_path: Path | None = None) -> tuple[int, str, float | None]:
    """`python -m cbtui ARGS`: exit code, stderr, and (given a tmp_path) its peak memory in MiB."""
    env = dict(os.environ)
    command = [sys.executable, "-m", "cbtui"]
    if tmp_path is not None:
        env["HWM_OUT"] = str(tmp_path / "hwm")
        command = [sys.executable, "-c", CLI_MEASURED]
    res = subprocess.run([*command, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)
    peak = None
    if tmp_path is not None:
        hwm = tmp_path / "hwm"
        peak = int(hwm.read_text()) / 1024
        hwm.unlink()
    return res.returncode, res.stderr, peak


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def sparse_tail(path: Path, good_lines: list[str], size: int = 1 << 30) -> Path:
    """Good lines, then zeros up to `size` bytes (a sparse file: it costs no disk)."""
    path.write_text("\n".join(good_lines) + "\n")
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


# -- item 6: no unbounded reads ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("command", [["replay"], ["trace"]])
def test_a_device_is_refused_at_once(tmp_path, command):
    """/dev/zero never ends: it is refused before a byte is read."""
    args = [*command, "/dev/zero"] + ([str(tmp_path / "out.json")] if command == ["trace"] else [])
    start = time.monotonic()
    rc, stderr, _ = run_cli(*args, timeout=30)
    assert rc == 2 and time.monotonic() - start < 25
    assert one_line(stderr) == f"cbtui: error: /dev/zero: not a regular file (a device, a pipe or a directory); {HOW}"


def test_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "run.jsonl"
    os.mkfifo(fifo)
    rc, stderr, _ = run_cli("replay", str(fifo), timeout=30)  # opening a FIFO would block: it is not opened
    assert rc == 2 and "not a regular file" in one_line(stderr)


def test_a_line_longer_than_the_limit_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(recording_module, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(GOOD[:3] + ["{" + " " * 5000 + "}"]) + "\n")
    with pytest.raises(RecordingError) as raised:
        load_recording(path)
    assert str(raised.value) == f"{path}:4: the line is longer than 0 MiB; no StepRecord is that long; {HOW}"


@pytest.mark.slow
def test_a_gigabyte_of_zeros_after_good_records_costs_one_line_not_a_gigabyte(tmp_path):
    """A recording whose tail is 1 GiB of zeros (no newline): the reader stops at the line limit,
    in seconds and without reading the rest; before, the whole file went into memory."""
    path = sparse_tail(tmp_path / "run.jsonl", GOOD)
    out = tmp_path / "keep.json"
    out.write_text("precious")
    start = time.monotonic()
    rc, stderr, peak_mib = run_cli("trace", str(path), str(out), timeout=120, tmp_path=tmp_path)
    assert rc == 2, stderr
    assert one_line(stderr) == (f"cbtui: error: {path}:{len(GOOD) + 1}: the line is longer than 64 MiB; no "
                                f"StepRecord is that long; {HOW}")
    assert time.monotonic() - start < 60
    # torch's import is most of it (about 270 MiB), the line limit 64 MiB; the file is 1 GiB
    assert peak_mib is not None and peak_mib < 700, f"peak memory {peak_mib:.0f} MiB"
    assert out.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.json", "run.jsonl"]


def test_a_replay_opens_on_its_first_record_without_reading_the_rest(tmp_path):
    path = sparse_tail(tmp_path / "run.jsonl", GOOD)
    start = time.monotonic()
    opened = open_recording(path)
    run = opened.run()
    assert time.monotonic() - start < 2
    assert run.step().step == 0
    assert "1 StepRecords so far" in opened.description or "2 StepRecords so far" in opened.description
    steps = [run.step().step for _ in range(len(GOOD) - 2)]
    assert steps == list(range(1, len(GOOD) - 1))
    assert run.has_unfinished()  # the bad line comes next: stepping into it is the error
    with pytest.raises(RecordingError, match=rf"run.jsonl:{len(GOOD) + 1}: the line is longer than 64 MiB"):
        run.step()
    assert f"A recorded run: {len(GOOD) - 1} StepRecords (steps 0..{len(GOOD) - 2})" in opened.description
    assert f"Line {len(GOOD) + 1} is not a good record: the replay stops before it." in opened.description


def test_a_bad_line_mid_replay_is_the_dashboards_one_line_error(tmp_path):
    """The dashboard opens on the first record; the bad line, reached while replaying, is shown in
    the error panel (one line, the file and the line), and the good steps stay browsable."""
    bad = json.loads(GOOD[5])
    bad["wall_time_s"] = 10**400
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join(GOOD[:5] + [json.dumps(bad)] + GOOD[6:]) + "\n")
    opened = open_recording(path)

    async def scenario():
        app = DashboardApp(opened, opened.run(), rebuild=opened.run, paused=True, speed=float("inf"),
                           recorded=True, memory_poll_s=3600.0)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: "Step 0" in header_text(app))
            assert "Replay: Mixed load" in header_text(app)
            await pilot.press("space")
            await wait_until(pilot, lambda: app.engine_state == "failed")
            assert shown_step(app) == 3  # lines 2..5 are steps 0..3
            assert app.error is not None and "\n" not in app.error
            assert f"{path}:6: not a StepRecord: wall_time_s must be a number from 0 to 2**53" in app.error
            await pilot.press("left")
            assert shown_step(app) == 2
            path.write_text("\n".join(GOOD) + "\n")  # mended: r reads the file again from the start
            await pilot.press("r")
            await wait_until(pilot, lambda: app.engine_state == "finished")
            assert app.error is None and shown_step(app) == len(GOOD) - 2
            assert f"A recorded run: {len(GOOD) - 1} StepRecords" in opened.description
            await pilot.press("q")
    asyncio.run(scenario())


# -- item 7: bad figures are one-line errors, and no file is destroyed ---------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("field", "value", "says"), [
    ("wall_time_s", "1e999", "wall_time_s must be a number from 0 to 2**53"),
    ("wall_time_s", "1" + "0" * 400, "wall_time_s must be a number from 0 to 2**53"),
    ("record_time_s", "-0.5", "record_time_s must be a number from 0 to 2**53"),
    ("step", "9" * 5000, "not a record: an integer of thousands of digits"),
    ("budget", "1" + "0" * 100, "budget=<an integer of more than 40 digits> must be an integer >= 0"),
], ids=["inf", "huge-int-float", "negative", "5000-digits", "huge-int"])
@pytest.mark.parametrize("at", [0, 4])
def test_trace_of_a_bad_figure_is_one_line_and_keeps_the_old_trace(tmp_path, field, value, says, at):
    records = GOOD[1:]
    bad = json.loads(records[at])
    bad[field] = 0
    line = json.dumps(bad).replace(f'"{field}": 0', f'"{field}": {value}')
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(records[:at] + [line] + records[at + 1:]) + "\n")
    keep = tmp_path / "keep.json"
    keep.write_bytes(b'{"traceEvents": []}\n')
    rc, stderr, _ = run_cli("trace", str(path), str(keep), timeout=60)
    assert rc == 2
    assert one_line(stderr) == f"cbtui: error: {path}:{at + 1}: not a StepRecord: {says}; {HOW}"
    assert keep.read_bytes() == b'{"traceEvents": []}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "keep.json"]  # no temporary file left


def test_trace_streams_a_good_recording_into_the_same_trace(tmp_path):
    from engine.records.trace_export import trace_events

    out = tmp_path / "run.json"
    rc, stderr, _ = run_cli("trace", str(DATA / "mixed_load.jsonl"), str(out), timeout=60)
    assert rc == 0, stderr
    trace = json.loads(out.read_text())
    assert trace["traceEvents"] == trace_events(load_recording(DATA / "mixed_load.jsonl").records)
    assert trace["displayTimeUnit"] == "ms"
