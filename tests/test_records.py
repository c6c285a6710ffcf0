"""StepRecords are plain data: they survive a JSON round trip unchanged."""

import json
from itertools import pairwise

from engine import Engine, EngineConfig, StepRecord


def test_json_round_trip_and_fields():
    eng = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=8, prefill_chunk_size=4,
                              block_size=4))
    eng.add_request("hello world", max_new_tokens=3)
    eng.add_request([5, 6, 7], max_new_tokens=2, arrival_step=2)
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
    for rec in records:
        data = json.loads(json.dumps(rec.to_dict()))
        assert StepRecord.from_dict(data) == rec
    first = records[0]
    assert first.budget == 8 and first.prefill_tokens == 4 and first.unused_tokens == 4
    assert first.kv.layout == "paged" and first.kv.block_size == 4
    assert first.memory.source == "rss" and first.memory.rss_bytes > 0
    assert first.memory.weight_bytes == eng.runner.model.weight_bytes()
    assert first.wall_time_s > 0
    assert [v.id for v in first.requests] == [0] and first.pending == 1  # not arrived: not alive yet
    done = records[-1].requests[-1]
    assert records[-1].finished == [done.id] and done.state == "finished" and done.ttft_steps is not None
    assert records[-1].finished_total == 2 and records[-1].running == 0


def test_request_added_mid_run_counts_ttft_from_when_it_was_added():
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    eng.add_request([1, 2], max_new_tokens=20)
    for _ in range(5):
        eng.step()
    late = eng.add_request([3, 4], max_new_tokens=2)  # arrival_step defaults to 0, but it is step 5
    rec = eng.step()
    view = next(v for v in rec.requests if v.id == late)
    assert view.arrival_step == 5 and view.ttft_steps == 0


def _run(read_at_once: bool):
    eng = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=12, prefill_chunk_size=5,
                              block_size=4, num_blocks=16))
    for i in range(6):
        eng.add_request([1 + i] * (3 + 4 * i), max_new_tokens=20 + i, arrival_step=i)
    records, seen = [], []
    while eng.has_unfinished():
        rec = eng.step()
        records.append(rec)
        if read_at_once:
            seen.append([tuple(v.__getattribute__(f) for f in v.__slots__) for v in rec.requests])
    if not read_at_once:
        seen = [[tuple(v.__getattribute__(f) for f in v.__slots__) for v in rec.requests] for rec in records]
    return records, seen


def test_request_views_read_late_show_the_step_they_were_taken_at():
    """Views are built on first read; read after the whole run they must still show each step as
    it was (output tails cut where they stood, states, reasons, preemptions)."""
    _, at_once = _run(True)
    records, late = _run(False)
    assert late == at_once
    assert any(v[1] == "preempted" or v[10] for step in late for v in step), "meant to preempt"
    # Against what the records say happened: preemptions counted so far, TTFT from the first token.
    preempted, first_token = {}, {}
    for rec in records:
        for rid in rec.preempted:
            preempted[rid] = preempted.get(rid, 0) + 1
        for v in rec.requests:
            if v.generated:
                first_token.setdefault(v.id, rec.step)
            assert v.num_preemptions == preempted.get(v.id, 0), (rec.step, v)
            assert v.ttft_steps == (first_token[v.id] - v.arrival_step if v.generated else None), (rec.step, v)
    assert max(preempted.values()) >= 1
    tails = [dict((v[0], v[11]) for v in step) for step in late]
    assert any(a != b for a, b in pairwise(tails))  # tails really move between steps
    assert len(records[0].requests) == 6 - records[0].pending  # the requests alive in the step


def test_id_keyed_snapshot_reads_like_a_dict_with_string_keys():
    from engine.records import IdKeyed

    live = {3: (1, 2), 10: (5,)}
    snap = IdKeyed(live)
    live[3] = (9,)  # later changes to the engine's dict do not reach the record
    del live[10]
    assert snap["3"] == (1, 2) and snap.get("10") == (5,) and "10" in snap and list(snap) == ["3", "10"]
    assert snap == {"3": (1, 2), "10": (5,)} and dict(snap) == {"3": (1, 2), "10": (5,)}
    assert snap.get("4") is None and snap.get("x") is None and "x" not in snap
    import pytest
    with pytest.raises(KeyError):
        snap["4"]


def test_records_package_loads_without_torch():
    """Replays and exports read records only: engine.records must not pull in torch (or the engine)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import engine.records, engine.records.recording, engine.records.metrics_export, "
            "engine.records.trace_export\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m == 'engine.engine')\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_record_holds_the_requests_alive_in_its_step_only():
    """Per-step cost and record size follow the step's activity, not the run's history: requests that
    finished leave the records after the step they finished in, and pending ones are only counted."""
    eng = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=32))
    for i in range(40):
        eng.add_request([1 + i % 200] * 6, max_new_tokens=2, arrival_step=i)
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
    for rec in records:
        ids = [v.id for v in rec.requests]
        assert ids == sorted(ids) and len(ids) == rec.running + rec.waiting + len(rec.finished)
        assert all(v.state != "pending" for v in rec.requests)
    assert max(len(r.requests) for r in records) <= 4  # 40 requests went through, a few at a time
