"""The dashboard's keys that change a run while it runs (issue #32): a to add a request, k to turn a
knob, d for the selected request's whole text, f to fork at the step on screen. Driven through
Textual's Pilot as a person would, on the tiny model (its outputs are noise, but exact)."""

from __future__ import annotations

import asyncio

from dashboard_helpers import make_app, make_replay_app, shown_step, wait_until

from cbtui.run.controller import MAX_SPEED
from cbtui.widgets.add_request_screen import AddRequestScreen
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
