"""The event narration (engine/records/events.py): each step's events, checked against what the
records and the engine say happened."""

import json

import pytest

from engine.records import StepRecord
from engine.records.events import (
    ADMITTED,
    FINISHED,
    NOTE,
    PADDING,
    PLUGIN_ERROR,
    PREEMPTED,
    RECOMPUTE,
    WAITING,
    step_events,
)
from engine.records.schema import check_record_json
from scenarios import load_scenario


def run_records(name: str, steps: int | None = None) -> tuple[list[StepRecord], object]:
    engine = load_scenario(name).build_engine(device="cpu")
    records = []
    while engine.has_unfinished() and (steps is None or len(records) < steps):
        record = engine.step()
        if record is not None:
            records.append(record)
    return records, engine


@pytest.fixture(scope="module")
def kv_pressure():
    return run_records("kv_pressure")


def test_preemption_says_who_needed_how_many_blocks_and_how_many_were_free(kv_pressure):
    records, engine = kv_pressure
    preempting = [r for r in records if r.preempted]
    assert preempting
    for record in preempting:
        assert [p.request_id for p in record.preemptions] == record.preempted
        for p in record.preemptions:
            assert p.blocks_needed > p.blocks_free  # why it was preempted at all
            # the victim gave back every block it held
            assert len(record.kv.freed_blocks[str(p.request_id)]) * record.kv.block_size >= p.tokens_dropped > 0
        told = [e for e in step_events(record) if e.kind == PREEMPTED]
        assert [e.request_id for e in told] == record.preempted
        p = record.preemptions[0]
        assert f"{p.blocks_free} free" in told[0].text and f"request {p.request_id} preempted" in told[0].text
    assert records[-1].preemptions_total == sum(len(r.preempted) for r in records)
    assert records[-1].preemptions_total == sum(r.num_preemptions for r in engine.requests.values())


def test_a_recompute_is_not_told_as_a_first_admission(kv_pressure):
    records, _ = kv_pressure
    admitted = {}
    recomputes = []
    for record in records:
        for event in step_events(record):
            if event.kind == ADMITTED:
                assert event.request_id not in admitted, "admitted twice without a preemption"
                admitted[event.request_id] = record.step
            elif event.kind == RECOMPUTE:
                assert event.request_id in {p for r in records if r.step < record.step for p in r.preempted}
                recomputes.append(event)
    assert sorted(admitted) == list(range(8))  # every request admitted once as itself
    assert len(recomputes) == sum(len(r.preempted) for r in records)
    assert all("recomputes" in e.text for e in recomputes)


def test_finished_says_how_many_blocks_it_freed(kv_pressure):
    records, _ = kv_pressure
    told = 0
    for record in records:
        for event in step_events(record):
            if event.kind == FINISHED:
                blocks = len(record.kv.freed_blocks[str(event.request_id)])
                assert event.text.endswith(f"{blocks} blocks freed") or event.text.endswith("1 block freed")
                told += 1
    assert told == 8


def test_admission_blocked_says_how_many_blocks_the_head_of_the_queue_needs(kv_pressure):
    records, _ = kv_pressure
    blocked = [r for r in records if r.admission_blocked is not None]
    assert blocked
    for record in blocked:
        b = record.admission_blocked
        assert b.blocks_needed > b.blocks_free
        assert next(v for v in record.requests if v.id == b.request_id).reason == "no free KV blocks"
        text = " ".join(e.text for e in step_events(record) if e.kind == WAITING)
        assert f"request {b.request_id} needs {b.blocks_needed} blocks, {b.blocks_free} free" in text


def test_decode_cap_says_how_many_it_left_waiting():
    records, _ = run_records("decode_heavy", steps=40)
    capped = [r for r in records if any(v.reason == "decode cap" for v in r.requests)]
    assert capped
    for record in capped:
        left = sum(v.reason == "decode cap" for v in record.requests)
        assert f"decode cap {record.decode_cap} left {left} waiting" in [e.text for e in step_events(record)]


def test_a_static_batch_tells_its_padding():
    records, _ = run_records("static_vs_continuous", steps=12)
    padded = [r for r in records if r.padding_slots]
    assert padded and padded[0].step == 4  # request 2 finished in step 3 (it ran in it): from step 4 its slot idles
    for record in records:
        told = [e.text for e in step_events(record) if e.kind == PADDING]
        assert told == ([f"static batch: {record.padding_slots} slot{'s' * (record.padding_slots > 1)} held by "
                         "finished requests (padding) until its longest member ends"] if record.padding_slots else [])


def test_plugin_errors_are_events():
    records, _ = run_records("mixed_load", steps=1)
    record = records[0]
    record.errors = ["plugin 'x' raised in before_step and was disabled: boom"]
    assert [e.text for e in step_events(record) if e.kind == PLUGIN_ERROR] == record.errors


def test_new_fields_survive_json_and_old_recordings_without_them_load(kv_pressure):
    records, _ = kv_pressure
    record = next(r for r in records if r.preemptions and r.admission_blocked)
    data = json.loads(json.dumps(record.to_dict()))
    check_record_json(data)
    again = StepRecord.from_dict(data)
    assert again.preemptions == record.preemptions and again.admission_blocked == record.admission_blocked
    assert step_events(again) == step_events(record)
    for field in ("preemptions", "preemptions_total", "admission_blocked"):
        del data[field]
    check_record_json(data)
    old = StepRecord.from_dict(data)
    assert [e.text for e in step_events(old) if e.kind == PREEMPTED] == \
        [f"request {rid} preempted (no free KV blocks)" for rid in record.preempted]


def test_plugin_notes_are_events_and_event_lines_tell_a_repeat_once():
    from cbtui.render.event_lines import event_lines

    records, _ = run_records("priority_sla", steps=12)
    noted = [r for r in records if r.annotations]
    assert noted
    for record in noted:
        assert [e.text for e in step_events(record) if e.kind == NOTE] == record.annotations
    told = [(r.step, line.strip()) for p, r in zip([None, *records], records, strict=False)
            for line in event_lines(r, p)]
    for note in {n for r in noted for n in r.annotations}:
        steps = [step for step, line in told if line == note]
        # told in the first step it appears, and again only after a step without it
        expected = [r.step for p, r in zip([None, *records], records, strict=False)
                    if note in r.annotations and (p is None or note not in p.annotations)]
        assert steps == expected, note
    assert all(len(line) <= 80 for r in records for line in event_lines(r))


def test_the_event_line_puts_the_event_that_paused_the_run_first():
    from cbtui.widgets.event_line import event_text

    records, _ = run_records("kv_pressure", steps=24)
    record = records[23]
    events = [e.text for e in step_events(record)]
    recompute = next(e for e in step_events(record) if e.kind == RECOMPUTE)
    assert events.index(recompute.text) > 0  # request 2's preemption comes first in the step's order
    text = str(event_text(record, records[22], f"recompute:3 hit: {recompute.text}"))
    assert text.startswith(f"paused: breakpoint recompute:3 hit · step 23: {recompute.text} · ")
    assert text.count(recompute.text) == 1
    other = str(event_text(record, records[22], "step:23 hit: step 23 reached"))
    assert other.startswith("paused: breakpoint step:23 hit: step 23 reached · step 23: " + events[0])


def test_prefix_hits_are_told_as_reuse_and_the_admission_is_still_an_admission():
    """With prefix caching an admitted request's first chunk starts after its cached keys: it is an
    admission all the same, and the reuse is told with its blocks and tokens."""
    from engine.records.events import REUSED

    records, _ = run_records("shared_prefix")
    hits = [(r, key, tokens) for r in records if r.kv.prefix is not None for key, tokens in r.kv.prefix.hits.items()]
    assert hits
    for record, key, tokens in hits:
        events = step_events(record)
        reuse = [e for e in events if e.kind == REUSED and e.request_id == int(key)]
        assert [e.text for e in reuse] == [
            f"request {key} reused {tokens // record.kv.block_size} blocks ({tokens} tokens) from the prefix cache"]
        assert any(e.kind in (ADMITTED, RECOMPUTE) and e.request_id == int(key) for e in events)


def test_speculating_decodes_say_how_many_drafts_were_accepted():
    from engine.records.events import DRAFTS

    records, _ = run_records("speculative", steps=20)
    speculating = [(r, i) for r in records for i in r.items if i.drafts]
    assert speculating
    for record, item in speculating:
        texts = [e.text for e in step_events(record) if e.kind == DRAFTS and e.request_id == item.request_id]
        draft_word = "draft" if item.drafts == 1 else "drafts"
        assert texts == [f"request {item.request_id}: {item.accepted} of {item.drafts} {draft_word} accepted"]


def test_an_event_line_too_long_for_its_rows_ends_in_an_ellipsis():
    from rich.console import Console
    from rich.text import Text

    from cbtui.widgets.event_line import fit_lines

    console = Console(width=40)
    story = Text(" · ".join(f"request {i} preempted (needs 3 blocks, 1 free)" for i in range(4)))
    fitted = fit_lines(story, 40, 2, console).plain.split("\n")
    assert len(fitted) == 2 and fitted[-1].endswith("…") and all(len(line) <= 40 for line in fitted)
    short = Text("step 3: request 1 finished")
    assert fit_lines(short, 40, 2, console) is short
