"""Compressed recordings (a --record name ending in .xz): frames of records, each an xz stream.

The same records as a plain recording, read back whole or one step at a time (history, replay,
trace), while being written and after; a run killed mid-frame keeps its whole frames.
"""

from __future__ import annotations

import lzma

import pytest

from cbtui.run.history import History
from engine.records import frames
from engine.records.recording import RecordingError, load_recording, open_recording
from engine.records.step_lines import RecordingWriter
from scenarios import load_scenario


def run_records(count: int, name: str = "mixed_load"):
    scenario = load_scenario(name)
    engine = scenario.build_engine(device="cpu")
    header = scenario.header(engine, None)
    records = []
    while engine.has_unfinished() and len(records) < count:
        records.append(engine.step())
    return header, records


def write(path, header, records, close: bool = True) -> RecordingWriter:
    writer = RecordingWriter(path)
    writer.start(header)
    for record in records:
        writer.write(record)
    if close:
        writer.close()
    return writer


@pytest.fixture(scope="module")
def run():
    return run_records(80)


def test_a_compressed_recording_holds_the_plain_recordings_lines_and_replays_the_same(tmp_path, run):
    header, records = run
    write(tmp_path / "run.jsonl", header, records)
    writer = write(tmp_path / "run.jsonl.xz", header, records)
    assert writer.compressed
    plain = (tmp_path / "run.jsonl").read_bytes()
    packed = (tmp_path / "run.jsonl.xz").read_bytes()
    assert packed.startswith(frames.XZ_MAGIC)
    assert lzma.decompress(packed) == plain  # one ordinary .xz file: `xz -dc` gives the plain recording
    assert len(packed) * 5 < len(plain)
    replay = load_recording(tmp_path / "run.jsonl.xz")
    assert replay.header == load_recording(tmp_path / "run.jsonl").header
    assert [r.to_dict() for r in replay.records] == [r.to_dict() for r in records]


def test_any_step_of_a_compressed_recording_is_read_back_by_its_frame(tmp_path, run):
    header, records = run
    write(tmp_path / "run.jsonl.xz", header, records)
    recording = open_recording(tmp_path / "run.jsonl.xz")
    assert len(list(recording.records())) == len(records)
    for record in reversed(records):  # backwards across frame boundaries, as history pages
        got = recording.read(record.step)
        assert got is not None and got.to_dict() == record.to_dict()
    assert recording.first_step() == records[0].step


def test_history_pages_back_through_a_compressed_recording_being_written(tmp_path, run):
    header, records = run
    writer = write(tmp_path / "live.jsonl.xz", header, records, close=False)
    assert 0 < len(writer.lines) < len(records)  # whole frames written, the last one still held
    h = History(limit=5, pages=writer.lines)
    for record in records:
        h.append(record)
    steps = [h.current().step]
    while h.can_go_back():
        h.back()
        steps.append(h.current().step)
    assert steps == [r.step for r in reversed(records)]
    writer.close()
    assert len(writer.lines) == len(records)


def test_a_compressed_recording_cut_mid_frame_keeps_its_whole_frames(tmp_path, run):
    header, records = run
    path = tmp_path / "cut.jsonl.xz"
    writer = write(path, header, records)
    whole = frames.FRAME_RECORDS * (len(records) // frames.FRAME_RECORDS)
    data = path.read_bytes()
    last_frame_start = writer.lines._starts[-1]
    path.write_bytes(data[:last_frame_start + (len(data) - last_frame_start) // 2])
    recording = open_recording(path)
    assert [r.step for r in recording.records()] == [r.step for r in records[:whole]]
    assert "cut short" in recording.description


def test_a_file_that_starts_as_xz_but_is_not_a_recording_is_one_error(tmp_path):
    path = tmp_path / "bad.jsonl.xz"
    path.write_bytes(frames.XZ_MAGIC + b"\x00" * 64)
    with pytest.raises(RecordingError, match="not an xz frame"):
        open_recording(path)
    path.write_bytes(lzma.compress(b"\x00\xff not text\n"))
    with pytest.raises(RecordingError, match="bad.jsonl.xz:1"):
        open_recording(path)


def test_a_frame_that_inflates_past_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(frames, "MAX_FRAME_BYTES", 1 << 10)
    path = tmp_path / "bomb.jsonl.xz"
    path.write_bytes(lzma.compress(b"\n" * (1 << 20)))
    with pytest.raises(RecordingError, match="more than"):
        open_recording(path)
