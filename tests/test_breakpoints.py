"""Breakpoints: specs, firing on records (pure), the command line, and a live run that pauses on
the step where one fires."""

import asyncio
import subprocess
import sys

import pytest
from dashboard_helpers import NO_GPU, SteadyEngine, make_replay_app, wait_until

from cbtui.apps.dashboard import DashboardApp
from cbtui.run.breakpoints import Breakpoint, BreakpointError, Breakpoints, parse
from engine.profiling.gpu_memory import FakeProbe
from scenarios import load_scenario


@pytest.mark.parametrize("spec, kind, value, normal", [
    ("preempt", "preempt", None, "preempt"), ("preempt:3", "preempt", 3, "preempt:3"),
    ("Preemption", "preempt", None, "preempt"), ("finish", "finish", None, "finish"),
    ("finish:12", "finish", 12, "finish:12"), ("admit:0", "admit", 0, "admit:0"),
    ("step:40", "step", 40, "step:40"), ("kv-free<4", "kv-free", 4, "kv-free<4"),
    ("kv-free < 4", "kv-free", 4, "kv-free<4"), ("wait>10", "wait", 10, "wait>10"),
    ("error", "error", None, "error"), ("recompute:4", "recompute", 4, "recompute:4"),
    ("first", "first", None, "first"), ("first-token:2", "first", 2, "first:2"),
])
def test_specs_parse(spec, kind, value, normal):
    assert parse(spec) == Breakpoint(normal, kind, value)


@pytest.mark.parametrize("spec", ["", "preempt:", "preempt:x", "step", "step:-1", "kv-free", "kv-free>4",
                                  "wait", "wait<3", "error:2", "nosuch", "preempt:3:4"])
def test_bad_specs_name_the_spec_and_the_forms(spec):
    with pytest.raises(BreakpointError) as caught:
        parse(spec)
    assert repr(spec) in str(caught.value) and "kv-free<K" in str(caught.value)


def run_records(name: str, steps: int | None = None):
    engine = load_scenario(name).build_engine(device="cpu")
    records = []
    while engine.has_unfinished() and (steps is None or len(records) < steps):
        records.append(engine.step())
    return records


@pytest.fixture(scope="module")
def kv_pressure():
    return run_records("kv_pressure")


def firing_steps(bp: Breakpoint, records) -> list[int]:
    previous, fired = None, []
    for record in records:
        if bp.fires(record, previous):
            fired.append(record.step)
        previous = record
    return fired


def test_each_breakpoint_fires_on_the_steps_its_records_say(kv_pressure):
    records = kv_pressure
    assert firing_steps(parse("preempt"), records) == [r.step for r in records if r.preempted]
    victim = next(r for r in records if r.preempted).preempted[0]
    assert firing_steps(parse(f"preempt:{victim}"), records) == [r.step for r in records if victim in r.preempted]
    assert firing_steps(parse("finish"), records) == [r.step for r in records if r.finished]
    assert firing_steps(parse("finish:5"), records) == [r.step for r in records if 5 in r.finished]
    admitted_first = [r.step for r in records if any(i.kind == "prefill" and i.first_pos == 0 for i in r.items)]
    assert firing_steps(parse("admit"), records) == admitted_first
    assert firing_steps(parse("step:40"), records) == [40]
    readmitted = [r.step for r in records if any(i.kind == "prefill" and i.first_pos == 0 and next(
        v for v in r.requests if v.id == i.request_id).num_preemptions for i in r.items)]
    assert readmitted and firing_steps(parse("recompute"), records) == readmitted
    assert firing_steps(parse("first:7"), records) == [next(r.step for r in records if any(
        v.id == 7 and v.generated == 1 and "7" in r.sampled for v in r.requests))]
    # below 3 free blocks: each time the pool crosses under 3, not every step it stays there
    crossings = [r.step for p, r in zip([None, *records], records, strict=False)
                 if r.kv.blocks_free < 3 and (p is None or p.kv.blocks_free >= 3)]
    assert len(crossings) > 1 and firing_steps(parse("kv-free<3"), records) == crossings
    # request 7 arrives at step 0 and waits for blocks for many steps: once, 11 steps after it arrived
    assert firing_steps(parse("wait>10"), records)[0] == 11
    assert firing_steps(parse("error"), records) == []


def test_wait_fires_once_per_request_and_only_while_it_is_queued(kv_pressure):
    records = kv_pressure
    bp = parse("wait>10")
    for record in records:
        hit = bp.fires(record)
        queued = [v for v in record.requests
                  if v.state in ("waiting", "preempted") and record.step - v.arrival_step == 11]
        assert (hit is not None) == bool(queued)


def test_an_error_breakpoint_fires_on_a_plugin_error():
    record = run_records("mixed_load", steps=1)[0]
    assert parse("error").fires(record) is None
    record.errors = ["plugin 'x' raised in before_step and was disabled: boom"]
    assert parse("error").fires(record) == record.errors[0]


def test_the_set_says_which_breakpoint_fired_and_forgets_the_previous_step_on_restart(kv_pressure):
    stops = Breakpoints([parse("kv-free<3"), parse("preempt")])
    assert not stops.add(parse("preempt")) and stops.specs() == ["kv-free<3", "preempt"]
    hits = [(r.step, stops.check(r)) for r in kv_pressure]
    first = next((step, hit) for step, hit in hits if hit)
    assert first[1].startswith("preempt hit: request 4 preempted") or first[1].startswith("kv-free<3 hit")
    stops.restart()
    assert stops._previous is None
    stops.clear()
    assert not stops and all(stops.check(r) is None for r in kv_pressure)


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    (["scenario", "kv_pressure", "--break-on", "preempt:x"], "--break-on: breakpoint 'preempt:x' is not one of"),
    (["replay", "tests/data/mixed_load.jsonl", "--break-on", "wait"], "--break-on: breakpoint 'wait'"),
    (["scenario", "kv_pressure", "--headless", "--break-on", "preempt"], "--break-on pauses the dashboard"),
])
def test_bad_break_on_is_one_line_and_exit_2(args, says):
    done = subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and says in done.stderr


def event_line_text(app) -> str:
    return str(app.query_one("#events").render())


def test_a_live_run_pauses_at_the_first_preemption_of_kv_pressure(kv_pressure):
    first = next(r for r in kv_pressure if r.preempted)

    async def scenario():
        scenario = load_scenario("kv_pressure")
        app = DashboardApp(scenario, SteadyEngine(scenario.build_engine(device="cpu")), paused=False,
                           speed=float("inf"), probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0,
                           breakpoints=[parse("preempt")])
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.paused and "paused: breakpoint" in event_line_text(app))
            await pilot.pause(0.3)
            # it stopped on that step, and the engine ran no further
            assert app.history.current().step == first.step == app.history.recent(1)[-1].step
            assert len(app.history) == first.step + 1
            text = event_line_text(app)
            # why it paused, then the step's events, the one that fired first (told once)
            assert text.startswith(f"paused: breakpoint preempt hit · step {first.step}: "
                                   f"request {first.preempted[0]} preempted (")
            assert text.count(f"request {first.preempted[0]} preempted") == 1
            assert "paused" in str(app.query_one("#header").render())
            # space resumes, and the next preemption pauses it again
            await pilot.press("space")
            second = next(r for r in kv_pressure if r.preempted and r.step > first.step)
            await wait_until(pilot, lambda: app.paused and app.history.current().step == second.step)
            assert f"request {second.preempted[0]} preempted" in event_line_text(app)
            # the event line follows history: one step back, no breakpoint message
            await pilot.press("left")
            assert "paused: breakpoint" not in event_line_text(app)
            assert f"step {second.step - 1}:" in event_line_text(app)
            await pilot.press("q")
    asyncio.run(scenario())


@pytest.mark.slow
def test_a_replay_pauses_at_a_step_breakpoint_set_with_the_b_key():
    async def scenario():
        app = make_replay_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.history.current() is not None)
            await pilot.press("b")
            await pilot.press(*"step:5", "enter")
            assert app.controller.breakpoints.specs() == ["step:5"]
            await pilot.press(*"bogus", "enter")
            assert "not one of" in str(app.screen.query_one("#bp-message").render())
            await pilot.press("escape")
            await pilot.press("space")  # run: the replay pauses itself on step 5
            await wait_until(pilot, lambda: app.paused and app.history.current().step == 5)
            await pilot.pause(0.3)
            assert app.history.current().step == 5 and len(app.history) == 6
            assert "paused: breakpoint step:5 hit: step 5 reached" in event_line_text(app)
            await pilot.press("q")
    asyncio.run(scenario())


def test_reuse_and_drafts_breakpoints_fire_on_prefix_hits_and_speculation():
    records = run_records("shared_prefix")
    hit_steps = [r.step for r in records if r.kv.prefix is not None and r.kv.prefix.hits]
    assert firing_steps(parse("reuse"), records) == hit_steps
    some = next(int(k) for r in records if r.kv.prefix is not None for k in r.kv.prefix.hits)
    assert firing_steps(parse(f"reuse:{some}"), records) == [
        r.step for r in records if r.kv.prefix is not None and str(some) in r.kv.prefix.hits]
    records = run_records("speculative", steps=12)
    assert firing_steps(parse("drafts"), records) == [r.step for r in records if any(i.drafts for i in r.items)]


HUGE = "9" * 5000  # past int()'s 4,300 digits


@pytest.mark.parametrize("spec", [f"step:{HUGE}", f"preempt:{HUGE}", f"kv-free<{HUGE}", f"wait>{HUGE}",
                                  f"finish:{'0' * 30}1{HUGE}", "x" * 5000], ids=lambda s: f"{s[:12]}..{len(s)}")
def test_a_huge_number_or_spec_is_one_short_line(spec):
    with pytest.raises(BreakpointError) as caught:
        parse(spec)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 1200 and HUGE not in message


def test_leading_zeros_are_not_digits_too_many():
    assert parse("step:" + "0" * 40 + "7") == Breakpoint("step:7", "step", 7)


def test_the_b_screen_says_a_huge_step_is_refused_and_stays_open():
    async def scenario():
        from textual.widgets import Input

        app = make_replay_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.history.current() is not None)
            await pilot.press("b")
            await pilot.pause()
            app.screen.query_one(Input).value = f"step:{HUGE}"
            await pilot.press("enter")
            await pilot.pause()
            assert "at most 18" in str(app.screen.query_one("#bp-message").render())
            assert app.controller.breakpoints.specs() == []
            await pilot.press("escape", "q")
        assert app.return_code in (0, None)
    asyncio.run(asyncio.wait_for(scenario(), 120))
