"""The Perfetto / Chrome trace of a run: every step a slice, every request a row whose slices say
exactly what the records say it did each step (prefill chunk, decode, or waiting and why)."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise

import pytest

from engine.records import REASON_NOT_ARRIVED
from engine.records.output_files import OutputFileError
from engine.records.summary import final_views
from engine.records.trace_export import REQUESTS_PID, SCHEDULER_PID, check_trace_path, trace_events, write_trace
from scenarios import load_scenario


@pytest.fixture(scope="module")
def records():
    engine = load_scenario("kv_pressure").build_engine(device="cpu")  # prefill chunks, decodes, preemption
    out = []
    while engine.has_unfinished():
        out.append(engine.step())
    assert any(r.preempted for r in out)
    return out


def slices(events, pid, tid=None):
    return [e for e in events if e["ph"] == "X" and e["pid"] == pid and (tid is None or e["tid"] == tid)]


def test_one_slice_per_step_back_to_back_with_its_wall_time(records):
    steps = slices(trace_events(records), SCHEDULER_PID)
    assert [s["name"] for s in steps] == [f"step {r.step}" for r in records]
    assert [s["args"]["decode_tokens"] for s in steps] == [r.decode_tokens for r in records]
    for s, r in zip(steps, records, strict=True):
        assert s["dur"] == pytest.approx(r.wall_time_s * 1e6, abs=0.01)
    for before, after in pairwise(steps):
        assert after["ts"] == pytest.approx(before["ts"] + before["dur"], abs=0.01)


def test_each_request_row_says_what_it_did_every_step(records):
    events = trace_events(records)
    starts = {r.step: s["ts"] for r, s in zip(records, slices(events, SCHEDULER_PID), strict=True)}
    step_at = {ts: step for step, ts in starts.items()}
    ids = sorted({v.id for r in records for v in r.requests})
    for rid in ids:
        said = {}  # step -> label, from the trace
        for s in slices(events, REQUESTS_PID, rid):
            first, last = s["args"]["steps"]
            assert step_at[s["ts"]] == first
            for step in range(first, last + 1):
                assert step not in said, "slices of one request never overlap"
                said[step] = s["name"]
        expected = {}  # step -> label, from the records
        for r in records:
            item = next((i for i in r.items if i.request_id == rid), None)
            view = next((v for v in r.requests if v.id == rid), None)  # None: not alive in that step
            if item is not None:
                expected[r.step] = "decode" if item.kind == "decode" else f"prefill {item.num_tokens} tok"
            elif view is not None and view.reason is not None and view.reason != REASON_NOT_ARRIVED:
                expected[r.step] = f"waiting: {view.reason}"
        assert said == expected, rid
    labels = {s["name"] for s in slices(events, REQUESTS_PID)}
    assert {"decode", "waiting: no free KV blocks", "waiting: preempted"} <= labels
    # Consecutive decodes merge into one slice: far fewer slices than decode steps.
    decode_steps = sum(1 for r in records for i in r.items if i.kind == "decode")
    assert len([s for s in slices(events, REQUESTS_PID) if s["name"] == "decode"]) < decode_steps / 4


def test_marks_for_preemption_first_token_and_finish(records):
    events = trace_events(records)
    marks = [e for e in events if e["ph"] == "i"]

    def count(name):
        return sum(1 for m in marks if m["name"] == name)

    assert count("preempted") == sum(len(r.preempted) for r in records) > 0
    assert count("finished") == records[-1].finished_total
    views = final_views(records).values()
    assert count("first token") == len([v for v in views if v.generated])
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["pid"] == REQUESTS_PID and "tid" in e}
    assert names == {f"request {v.id}" for v in views}
    counters = [e for e in events if e["ph"] == "C" and e["name"] == "KV blocks"]
    assert [c["args"]["used"] for c in counters] == [r.kv.blocks_used for r in records]


def test_the_file_is_plain_json_and_bad_paths_fail_first(records, tmp_path):
    path = write_trace(records, tmp_path / "run.json")
    data = json.loads(path.read_text())
    assert data["displayTimeUnit"] == "ms" and data["traceEvents"] == trace_events(records)
    with pytest.raises(OutputFileError, match="unknown trace format '.txt'"):
        check_trace_path(tmp_path / "run.txt")
    with pytest.raises(OutputFileError, match="does not exist"):
        check_trace_path(tmp_path / "missing" / "run.json")


@pytest.mark.slow
def test_cli_trace_from_a_recording_and_its_bad_input(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=120)

    recording = tmp_path / "run.jsonl"
    res = cli("scenario", "mixed_load", "--json", "--steps", "6", "--trace-out", str(tmp_path / "live.json"))
    assert res.returncode == 0
    recording.write_text(res.stdout)
    res = cli("trace", str(recording), str(tmp_path / "run.json"))
    assert res.returncode == 0 and "trace written to" in res.stderr
    from_recording = json.loads((tmp_path / "run.json").read_text())["traceEvents"]
    assert from_recording == json.loads((tmp_path / "live.json").read_text())["traceEvents"]
    assert len(slices(from_recording, SCHEDULER_PID)) == 6
    res = cli("trace", str(recording), str(tmp_path / "run.txt"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown trace format" in res.stderr
    res = cli("scenario", "mixed_load", "--trace-out", str(tmp_path / "x.txt"))  # the dashboard checks it first too
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown trace format" in res.stderr


def test_a_failed_write_leaves_the_file_that_was_there(tmp_path):
    """Written under a temporary name and renamed when whole: a value JSON cannot hold (a float out of
    range in a recording) fails before anything replaces the good file, and no temporary file stays."""
    import math

    from engine.records.output_files import write_atomically

    keep = tmp_path / "keep.json"
    keep.write_text('{"good": true}')
    with pytest.raises(ValueError, match="Out of range float"):
        write_atomically(keep, lambda f: json.dump({"bad": math.inf}, f, allow_nan=False))
    assert keep.read_text() == '{"good": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]
    write_atomically(keep, lambda f: json.dump({"new": 1}, f))
    assert json.loads(keep.read_text()) == {"new": 1} and len(list(tmp_path.iterdir())) == 1
