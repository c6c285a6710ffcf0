"""The dashboard's keys that change a run while it runs (issue #32): a to add a request, k to turn a
knob, d for the selected request's whole text, f to fork at the step on screen. Driven through
Textual's Pilot as a person would, on the tiny model (its outputs are noise, but exact)."""

from __future__ import annotations

import asyncio

import pytest
from dashboard_helpers import make_app, make_replay_app, shown_step, wait_until
from textual import events
from textual.widgets import DataTable, Input

from cbtui.apps import fork_view
from cbtui.apps.compare import CompareApp
from cbtui.apps.engine_fed import DEFAULT_SPEED
from cbtui.run.added_requests import add_typed_request
from cbtui.run.breakpoints import parse
from cbtui.run.controller import MAX_SPEED
from cbtui.run.fork import ForkPlan, error_file, load_plan, save_plan
from cbtui.run.request_text import RequestText, request_text
from cbtui.widgets.add_request_screen import AddRequestScreen
from cbtui.widgets.fork_screen import ForkScreen
from cbtui.widgets.knob_screen import KnobScreen
from cbtui.widgets.request_detail_screen import RequestDetailScreen, body
from cbtui.widgets.requests_table import RequestsTable
from engine import Engine
from scenarios import load_scenario


def run(coro):
    return asyncio.run(coro)


def keys_of(text: str) -> list[str]:
    return ["space" if c == " " else c for c in text]


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


async def from_engine(pilot, app, call):
    """call(engine) on the engine thread between steps, its answer here."""
    future = app.controller.between_steps(call)
    await wait_until(pilot, future.done)
    return future.result()


def alone(prompt: list[int], max_new_tokens: int) -> list[int]:
    """The request run by itself, in an engine of the same settings."""
    engine = Engine(load_scenario("mixed_load").engine_config(device="cpu"))
    rid = engine.add_request(prompt, max_new_tokens=max_new_tokens)
    return engine.run_until_done()[rid]


def test_a_adds_a_request_that_joins_at_the_next_step_and_answers_as_it_would_alone():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("a", *keys_of("what is batching?"), "tab", "backspace", "backspace", "9", "enter")
            await wait_until(pilot, lambda: app.added)
            added = app.added[0]
            assert added.request_id == 12 and added.max_new_tokens == 9 and added.arrival_step == 1
            assert not added.chat  # the tiny preset has no chat template: the text as bytes
            assert list(added.prompt) == list(b"what is batching?")
            assert app.selected == 12
            assert any("request 12 added" in n and "joins at step 1" in n for n in notes(app))
            await pilot.press("n")
            await wait_until(pilot, lambda: shown_step(app) == 1)
            view = next(v for v in app.history.current().requests if v.id == 12)
            await pilot.pause(0.3)
            table = app.query_one(RequestsTable)
            assert app.selected == 12 and table.selected_request() == 12 and table.show_cursor  # its row, in view
            assert view.state in ("prefill", "decode") and view.prompt_len == len(added.prompt)
            app.speed = MAX_SPEED
            app.controller.set_speed(MAX_SPEED)
            await pilot.press("space")
            await wait_until(pilot, lambda: app.engine_state == "finished", timeout=60)
            output = await from_engine(pilot, app, lambda e: list(e.requests[12].output))
            assert len(output) == 9
            assert output == alone(list(added.prompt), 9)
    run(scenario())


def test_a_refuses_bad_input_in_one_line_and_the_run_goes_on():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("a", "enter")  # no text: the box says so and stays open
            box = app.screen
            assert isinstance(box, AddRequestScreen)
            assert "the prompt is empty" in str(box.query_one("#add-message").render())
            await pilot.press("x", "tab", "backspace", "backspace", "0", "enter")
            assert "must be a whole number above 0" in str(box.query_one("#add-message").render())
            await pilot.press("backspace", *"99999", "enter")  # longer than the tiny model's context
            await wait_until(pilot, lambda: any("request not added" in n for n in notes(app)))
            line = next(n for n in notes(app) if "request not added" in n)
            assert "exceeds the context" in line and "\n" not in line
            assert not app.added and not isinstance(app.screen, AddRequestScreen)
            await pilot.press("a", "escape")  # escape: nothing added
            assert not isinstance(app.screen, AddRequestScreen)
            await pilot.press("n")
            await wait_until(pilot, lambda: shown_step(app) == 1)
            assert app.engine_state == "running" and all(v.id < 12 for v in app.history.current().requests)
    run(scenario())


def test_a_on_a_replay_refuses_politely():
    async def scenario():
        app = make_replay_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("a")
            assert not isinstance(app.screen, AddRequestScreen)
            assert any("a recorded run cannot be changed" in n for n in notes(app))
    run(scenario())


def knob_message(app) -> str:
    return str(app.screen.query_one("#knob-message").render())


def test_k_turns_the_budget_from_the_next_step_and_the_record_says_so():
    async def scenario():
        app = make_app(paused=True)  # mixed_load: a budget of 48
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("k")
            screen = app.screen
            assert isinstance(screen, KnobScreen)
            await wait_until(pilot, lambda: screen.rows)
            first = screen.rows[0]
            assert first.name == "max_tokens_per_step" and first.value == "48" and first.fixed_because is None
            fixed = next(r for r in screen.rows if r.name == "kv_layout")
            assert fixed.fixed_because  # shown read-only, with the reason its section gives
            await pilot.press("enter")  # the highlighted row into the field
            assert screen.query_one(Input).value == "max_tokens_per_step=48"
            await pilot.press("backspace", "backspace", "9", "6", "enter")
            await wait_until(pilot, lambda: "48 -> 96 from step 1" in knob_message(app))
            await wait_until(pilot, lambda: screen.rows[0].pending == "96 at step 1")
            await pilot.press("escape", "n")
            await wait_until(pilot, lambda: shown_step(app) == 1)
            record = app.history.current()
            assert record.changes == ["max_tokens_per_step 48 -> 96"]
            assert record.budget == 96
            assert [(t.name, t.old, t.new, t.step) for t in app.turned] == [("max_tokens_per_step", 48, 96, 1)]
    run(scenario())


def test_k_refuses_a_fixed_setting_and_a_bad_value_in_one_line_and_the_run_goes_on():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("k")
            screen = app.screen
            await wait_until(pilot, lambda: screen.rows)
            fixed_at = next(i for i, r in enumerate(screen.rows) if r.name == "kv_layout")
            screen.query_one(DataTable).move_cursor(row=fixed_at)
            await pilot.press("enter")  # a fixed row: why, and the field stays empty
            await wait_until(pilot, lambda: "kv_layout cannot change while the run goes on" in knob_message(app))
            assert screen.query_one(Input).value == ""
            screen.query_one(Input).focus()
            await pilot.press(*"kv_layout=dense", "enter")
            assert "kv_layout cannot change while the run goes on" in knob_message(app)
            assert "\n" not in knob_message(app)
            screen.query_one(Input).value = ""
            await pilot.press(*"max_tokens_per_step=0", "enter")
            await wait_until(pilot, lambda: "not changed: max_tokens_per_step=0 is out of range" in knob_message(app))
            screen.query_one(Input).value = ""
            await pilot.press(*"prefill_chunk_size=lots", "enter")
            assert "prefill_chunk_size takes an integer" in knob_message(app)
            await pilot.press("escape", "n")
            await wait_until(pilot, lambda: shown_step(app) == 1)
            assert app.history.current().budget == 48 and not app.history.current().changes and not app.turned
    run(scenario())


def test_k_on_a_replay_refuses_politely():
    async def scenario():
        app = make_replay_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("k")
            assert not isinstance(app.screen, KnobScreen)
            assert any("a recorded run cannot be changed: turning a knob" in n for n in notes(app))
    run(scenario())


def test_d_shows_the_selected_requests_whole_text_and_follows_the_run():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("d")  # nothing selected: says how
            assert not isinstance(app.screen, RequestDetailScreen)
            assert any("select a request first" in n for n in notes(app))
            await pilot.press("down")
            assert app.selected == 0
            await pilot.press("n", "n", "n", "d")
            screen = app.screen
            assert isinstance(screen, RequestDetailScreen)
            await wait_until(pilot, lambda: screen.detail is not None and screen.detail.step == 3)
            detail = screen.detail
            assert detail.prompt == "Continuous batching lets new requests join at token boundaries."
            assert detail.generated >= 1 and detail.prompt_tokens == 63 and detail.max_new_tokens == 24
            shown = str(screen.query_one("#detail-text").render())
            assert shown.startswith("Continuous batching") and "── output ──" in shown
            assert "after step 3" in str(screen.query_one("#detail-facts").render())
            before = detail.generated
            app.controller.step_once()  # the run goes on under the screen: the text follows
            await wait_until(pilot, lambda: screen.detail.step == 4)
            assert screen.detail.generated == before + 1
            await pilot.press("escape")
            assert not isinstance(app.screen, RequestDetailScreen)
    run(scenario())


def test_d_on_a_finished_request_takes_its_prompt_from_the_workload():
    async def scenario():
        app = make_app(paused=False, speed=MAX_SPEED)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.engine_state == "finished", timeout=60)
            app.selected = 1
            await pilot.press("d")
            screen = app.screen
            await wait_until(pilot, lambda: screen.detail is not None)
            assert screen.detail.prompt == "Hi!" and screen.detail.generated == 12
            assert screen.detail.computed is None
            assert str(screen.query_one("#detail-facts").render()).startswith("finished")
    run(scenario())


def test_the_detail_text_writes_control_characters_out():
    detail = RequestText(3, 5, "decode", "\x1b[2Jclear\x07 me\nnext line\u202e", "out\x1b]0;title\x07", 9, 12,
                         3, 8)
    shown = str(body(detail))
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b[2Jclear\\x07 me\nnext line\\u202e" in shown and "out\\x1b]0;title\\x07" in shown


def same(record):
    """Everything a record says but its timings (and the change it tells, which a fork adds)."""
    d = record.to_dict()
    for key in ("wall_time_s", "record_time_s", "device_time_s", "memory"):
        d.pop(key)
    return d


def all_records(variant, overrides) -> list:
    engine = variant.build_engine(**overrides)
    records = []
    while engine.has_unfinished():
        records.append(engine.step())
    return records


def fork_app(**kwargs):
    scenario = load_scenario("mixed_load")
    return make_app(fork_base=(scenario, {"device": "cpu"}), **kwargs)


def test_f_forks_the_run_as_it_went_and_both_runs_share_every_step_to_n():
    async def scenario():
        app = fork_app(paused=True)
        plans = []
        app.open_fork = plans.append  # the compare view's process needs a terminal: the plan is what it gets
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("a", *keys_of("fork me"), "tab", "6", "enter")
            await wait_until(pilot, lambda: app.added)
            await pilot.press("k", "enter", "backspace", "backspace", "3", "2", "enter")
            await wait_until(pilot, lambda: app.turned)
            await pilot.press("escape", "n", "n")
            await wait_until(pilot, lambda: shown_step(app) == 2)
            app.query_one(RequestsTable).select(1)  # as a person would: the table's cursor, not only the app's
            await wait_until(pilot, lambda: app.selected == 1)
            await pilot.press("x")  # request 1 leaves before step 3
            await wait_until(pilot, lambda: app.aborted)
            await pilot.press("n")
            await wait_until(pilot, lambda: shown_step(app) == 3)
            assert app.history.current().aborted == [1]
            await pilot.press("k")
            app.screen.query_one(Input).focus()
            await pilot.press(*"prefill_chunk_size=8", "enter")
            await wait_until(pilot, lambda: len(app.turned) == 2)
            await pilot.press("escape", "f")
            box = app.screen
            assert isinstance(box, ForkScreen) and box.step == 3
            assert box.query_one(Input).value == "prefill_chunk_size=8"  # the knob turned after step 3
            await pilot.press("enter")
            await wait_until(pilot, lambda: plans)
            live = [same(r) for r in app.history.recent(4)]
        plan = load_plan(save_plan(plans[0]))  # as the compare view's process reads it
        assert plan.step == 3 and plan.changes == (("prefill_chunk_size", 8),)
        assert plan.turned == ((1, "max_tokens_per_step", 32),) and plan.aborted == ((3, 1),)
        assert [a["request_id"] for a in plan.added] == [12] and plan.change_texts() == ["4:prefill_chunk_size=8"]
        a, b = plan.runs()
        assert a.name == "as it ran to step 3" and b.name == "fork 4:prefill_chunk_size=8"
        ran, forked = all_records(a, plan.overrides), all_records(b, plan.overrides)
        assert [same(r) for r in ran[:4]] == [same(r) for r in forked[:4]]
        # A is the live run, record for record, but for one thing: the request typed in at step 0 is
        # part of A's workload from the start, so step 0 counts it among the requests still to arrive.
        assert ran[0].pending == live[0]["pending"] + 1
        live[0]["pending"] += 1
        assert [same(r) for r in ran[:4]] == live
        assert ran[1].changes == ["max_tokens_per_step 48 -> 32"] and ran[1].budget == 32
        assert ran[3].aborted == forked[3].aborted == [1]
        assert forked[4].changes == ["prefill_chunk_size 16 -> 8"] and not ran[4].changes
        assert same(ran[4]) != same(forked[4])
    run(scenario())


def test_f_refuses_in_one_line_when_it_cannot_fork_and_a_no_op_change_forks_the_run_itself():
    async def scenario():
        app = fork_app(paused=False)
        plans = []
        app.open_fork = plans.append
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.history.current() is not None)
            await pilot.press("f")  # running: pause first
            assert any("pause on the step to fork at" in n for n in notes(app))
            await pilot.press("space")
            await wait_until(pilot, lambda: app.paused)
            for typed, why in (("", "no change typed"), ("num_blocks=8", "num_blocks cannot change"),
                               ("max_tokens_per_step=0", "max_tokens_per_step=0 is out of range")):
                await pilot.press("f", *typed, "enter")
                await wait_until(pilot, lambda why=why: any("no fork: " in n and why in n for n in notes(app)))
            assert not plans and app.engine_state == "running"
            step = shown_step(app)
            await pilot.press("f", *"max_tokens_per_step=48", "enter")  # the budget it has: no change at all
            await wait_until(pilot, lambda: plans)
        a, b = plans[0].runs()
        assert plans[0].step == step
        cpu = {"device": "cpu"}
        assert [same(r) for r in all_records(a, cpu)] == [same(r) for r in all_records(b, cpu)]
    run(scenario())


def test_f_on_a_replay_or_a_run_it_cannot_rebuild_refuses():
    async def scenario():
        for app, why in ((make_replay_app(paused=True), "a recorded run cannot be changed"),
                         (make_app(paused=True), "this run cannot be forked here")):
            async with app.run_test(size=(100, 30)) as pilot:
                await wait_until(pilot, lambda app=app: shown_step(app) == 0)
                await pilot.press("f")
                assert not isinstance(app.screen, ForkScreen)
                assert any(why in n for n in notes(app))
    run(scenario())


def test_the_fork_view_process_says_why_a_plan_cannot_run_in_one_line(tmp_path):
    plan = ForkPlan(load_scenario("mixed_load"), None, {"device": "cpu", "attention": "no-such"}, 3, (), (),
                    (("max_tokens_per_step", 96),))
    path = save_plan(plan)
    try:
        assert fork_view.main([str(path)]) == 2
        line = error_file(path).read_text()
        assert "attention" in line and "\n" not in line
    finally:
        path.unlink()
        error_file(path).unlink(missing_ok=True)


def burst(app, keys: str | list[str]) -> None:
    """Keys as one read of the terminal (tmux send-keys 'ahi there' Enter): no wait between them."""
    for key in keys:
        character = {"enter": "\r", "space": " "}.get(key, key if len(key) == 1 else None)
        event = events.Key(key, character)
        event.set_sender(app)
        app._driver.send_message(event)


def test_keys_typed_faster_than_a_box_opens_go_into_it_never_to_the_dashboard():
    """`r` restarts and `q` quits the dashboard: typed right after `a`, before the box had focused its
    field, they reached the app (the box saw nothing, the run restarted)."""
    async def scenario():
        app = fork_app(paused=True)
        plans = []
        app.open_fork = plans.append
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            burst(app, ["a", *keys_of("quit or restart"), "tab", "7", "enter"])
            await wait_until(pilot, lambda: app.added)
            assert app.is_running and list(app.added[0].prompt) == list(b"quit or restart")
            assert app.added[0].max_new_tokens == 7  # tab went to the max tokens field, 7 replaced 32
            burst(app, ["k", *"prefill_chunk_size=8", "enter"])
            await wait_until(pilot, lambda: app.turned)
            assert app.turned[0].name == "prefill_chunk_size"
            await pilot.press("escape")
            burst(app, ["f", "enter"])  # the fork box, prefilled with that turn, at once
            await wait_until(pilot, lambda: plans)
            assert plans[0].changes == (("prefill_chunk_size", 8),) and app.is_running
            assert shown_step(app) == 0 and app.engine_state == "running"
    run(scenario())


def test_the_fork_view_runs_to_the_step_forked_at_and_pauses_there_for_the_first_difference():
    plan = ForkPlan(load_scenario("mixed_load"), None, {"device": "cpu"}, 6, (), (),
                    (("max_tokens_per_step", 8),))
    runs = plan.runs()

    def build():
        return [v.build_engine(**plan.overrides) for v in runs]

    async def scenario():
        app = CompareApp(plan.as_it_ran(), runs, build(), rebuild=build, speed=MAX_SPEED,
                         breakpoints=[parse("step:6")])
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_until(pilot, lambda: app.paused and app.newest_step() == 6, timeout=30)
            await pilot.pause(0.3)
            assert app.newest_step() == 6 and app.speed == DEFAULT_SPEED  # stopped on the very step
            a, b = (pane.history.current() for pane in app.panes)
            assert a.budget == b.budget == 48
            await pilot.press("n")
            await wait_until(pilot, lambda: app.newest_step() == 7)
            a, b = (pane.history.current() for pane in app.panes)
            assert a.budget == 48 and b.budget == 8 and b.changes == ["max_tokens_per_step 48 -> 8"]
    run(scenario())


@pytest.mark.slow
def test_a_typed_prompt_on_smollm2_goes_through_its_chat_template_and_answers_as_alone(monkeypatch):
    from engine.models.packaged import is_pulled, packaged_path

    monkeypatch.delenv("CBTUI_CACHE_DIR", raising=False)  # the default cache, where `cbtui pull` puts it
    if not is_pulled("smollm2"):
        pytest.skip(f"smollm2 is not pulled ({packaged_path('smollm2')}); run `cbtui pull smollm2`")
    scenario = load_scenario("chat", model="smollm2")
    engine = scenario.build_engine(model="smollm2", device="cpu", dtype="float32")
    for _ in range(3):
        engine.step()
    added = add_typed_request(engine, "What is the capital of Italy?", 12)
    assert added.chat and list(added.prompt) == engine.tokenizer.chat_prompt("What is the capital of Italy?")
    assert added.arrival_step == 3
    outputs = engine.run_until_done()
    text = request_text(engine, added.request_id, added.spec())
    assert text.output.endswith("<|im_end|>") and text.prompt.startswith("<|im_start|>")  # an answer, a turn
    alone = Engine(engine.config)
    rid = alone.add_request(list(added.prompt), max_new_tokens=12)
    assert outputs[added.request_id] == alone.run_until_done()[rid]


def test_d_on_a_replay_shows_what_the_record_keeps_and_says_so():
    async def scenario():
        app = make_replay_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("n", "n", "n", "n", "down")
            await wait_until(pilot, lambda: shown_step(app) == 4 and app.selected is not None)
            await pilot.press("d")
            screen = app.screen
            await wait_until(pilot, lambda: screen.detail is not None)
            assert not screen.detail.whole and screen.detail.prompt is None
            shown = str(screen.query_one("#detail-text").render())
            assert "a recording keeps only the output's last tokens" in shown
            assert "whose text this run does not keep" in shown
    run(scenario())
