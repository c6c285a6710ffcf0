"""The Engine's public API: a bad call raises ValueError naming what is wrong, and changes nothing."""

import pytest

from engine import Engine, EngineConfig
from engine.records import RunHeader


def tiny(**kw) -> Engine:
    return Engine(EngineConfig(model="tiny", device="cpu", **kw))


def test_a_rejected_request_is_never_queued():
    eng = tiny(overlap_steps=True)
    with pytest.raises(ValueError, match="overlap_steps=True samples greedily"):
        eng.add_request([1, 2, 3], max_new_tokens=4, temperature=0.7)
    assert not eng.has_unfinished() and eng.requests == {}
    kept = eng.add_request([1, 2, 3], max_new_tokens=4)
    assert list(eng.run_until_done()) == [kept]  # only the good request ran


@pytest.mark.parametrize("bad, words", [
    (dict(prompt=None), "prompt=None must be a string or a list"),
    (dict(prompt=123), "prompt=123 must be a string or a list"),
    (dict(prompt={"a": 1}), "must be a string or a list"),
    (dict(deadline_step="soon"), "deadline_step='soon' must be an integer"),
    (dict(max_new_tokens="3"), "max_new_tokens='3' is out of range"),
])
def test_bad_requests_are_value_errors(bad, words):
    eng = tiny()
    with pytest.raises(ValueError, match=words):
        eng.add_request(**{"prompt": [1, 2], **bad})
    assert eng.requests == {} and not eng.has_unfinished()


def test_engine_wants_a_config_and_max_steps_an_integer():
    with pytest.raises(ValueError, match="Engine takes an EngineConfig"):
        Engine("tiny")  # type: ignore[arg-type]  # the misuse under test
    with pytest.raises(ValueError, match="max_steps='3' must be an integer"):
        tiny().run_until_done(max_steps="3")  # type: ignore[arg-type]  # the misuse under test


def test_the_header_says_what_runs():
    eng = tiny(kv_layout="dense", max_tokens_per_step=32)
    header = eng.header(title="T", question="Why?")
    assert header == RunHeader(model="tiny", device="cpu", dtype="float32", attention="sdpa", kv_layout="dense",
                               policy="fcfs", max_tokens_per_step=32, prefill_chunk_size=16, block_size=16,
                               num_blocks=0, title="T", question="Why?")
    assert RunHeader.from_dict(header.to_dict()) == header


def test_each_record_says_its_own_timing():
    eng = tiny()
    eng.add_request([1, 2, 3], max_new_tokens=3)
    records = [eng.step() for _ in range(3)]
    assert all(0 < r.record_time_s < r.wall_time_s for r in records)
    assert all(r.device_time_s is None for r in records)  # no GPU events on the CPU


def test_ids_and_tokens_a_recording_could_not_hold_are_refused():
    with pytest.raises(ValueError, match=r"request_id=9007199254740993 must be an integer in 0..2\*\*53"):
        tiny().add_request([1], request_id=2**53 + 1)
    with pytest.raises(ValueError, match="eos_token_id=256 is outside the vocabulary of model 'tiny'"):
        tiny(eos_token_id=256)


@pytest.mark.slow
@pytest.mark.parametrize("speed", ["nan", "0", "-1", "fast"])
def test_a_bad_speed_is_one_line(speed):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "mixed_load", "--speed", speed],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("cbtui: error: Invalid value for '--speed'")
    assert len(res.stderr.strip().splitlines()) == 1


def test_finished_requests_leave_the_hot_structures_untracked():
    """A long run finishes ~100,000 requests: what stays of each is a plain tuple the garbage collector
    does not walk, read back through the same fields as a live request."""
    import gc

    eng = tiny()
    ids = [eng.add_request([i + 1, 2, 3], max_new_tokens=3) for i in range(5)]
    outputs = eng.run_until_done()
    assert not eng.requests.live and len(eng.requests) == 5 and set(eng.requests) == set(ids)
    gc.collect()
    gc.collect()  # a tuple is untracked once the tuples inside it are: the outer ones on the second pass
    assert not any(gc.is_tracked(t) for t in eng.requests.finished.values())
    done = eng.requests[ids[0]]
    assert done.output == outputs[ids[0]] and done.is_finished and done.finished_step is not None
