"""Each lesson's text against its screen at 80x24, where a class over SSH sees it: at the lesson's
pause, the figures and words it quotes are on screen (Lesson.shows), every panel it names is drawn
with rows to read, every request it names is in sight in those panels, and every command it tells the
student to run is one cbtui takes. Claims about later steps are checked in the run's records."""

from __future__ import annotations

import asyncio
import re
import shlex

import pytest
from dashboard_helpers import NO_GPU, wait_until
from test_lessons import screen_text, squeeze

from cbtui.classroom.lesson_app import open_lesson
from cbtui.classroom.lessons import LESSONS, Lesson
from cbtui.render.colors import NONE, color_mode
from cbtui.widgets.mask import MaskCanvas
from cbtui.widgets.requests_table import RequestsTable
from engine.profiling.gpu_memory import FakeProbe
from scenarios import load_scenario

SIZE = (80, 24)

# A panel's name in a lesson's text -> the widget that draws it, and the fewest rows (border included)
# that say something there: a Memory panel with its title alone, a mask of 3 rows, do not count.
PANELS = {
    "event line": ("#events", 1),
    "header": ("#header", 2),
    "header notes": ("#header", 3),
    "Token budget": ("#budget-panel", 3),
    "budget title": ("#budget-panel", 1),
    "KV cache": ("#kv-panel", 3),
    "Memory": ("#memory-box", 3),
    "Ragged mask": ("#mask-panel", 5),
    "Requests": ("#requests-panel", 3),
}
KEYS = {"metrics": "m Metrics"}  # a screen a key opens, named in the footer


def named_panels(lesson: Lesson) -> list[str]:
    """'Requests (state, pre), event line' -> ['Requests', 'event line']."""
    return [re.sub(r"\s*\(.*", "", part).strip() for part in re.split(r",\s*(?![^()]*\))", lesson.panel)]


def named_requests(text: str) -> set[int]:
    """The request ids a text names: 'request 3', 'requests 0 and 2', 'request (3)', 'request 2's'."""
    ids = {int(n) for n in re.findall(r"\brequests? \(?(\d+)\)?", text)}
    ids |= {int(n) for n in re.findall(r"\brequests \d+ and (\d+)", text)}
    return ids


def commands(text: str) -> list[list[str]]:
    """Every `cbtui ...` a text tells the student to run: up to ': ', ', ', '. ', '?' or the end."""
    return [shlex.split(c) for c in re.findall(r"cbtui (.*?)(?=[:,.?](?:\s|$)|$)", text)]


def at_the_pause(number: int, check) -> None:
    """Opens lesson `number` at 80x24, runs it to its pause and calls check(app) there."""
    async def scenario():
        app = open_lesson(number, [], probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.break_hit is not None, timeout=60)
            await pilot.pause(0.3)
            check(app)
            await pilot.press("q")
    asyncio.run(scenario())


def visible_rows(app, selector: str) -> int:
    """Rows of the widget inside the screen (0 when it is not displayed)."""
    widget = app.query_one(selector)
    if not widget.display or not widget.region.area:
        return 0
    return widget.region.intersection(app.screen.region).height


def check_on_screen(app, lesson: Lesson, number: int) -> None:
    text = screen_text(app)
    flat = squeeze(text)
    assert "Ask: " + squeeze(lesson.question) in flat, text  # the whole text, nothing cut off
    for phrase in lesson.shows:
        assert squeeze(phrase) in flat, f"lesson {number}: {phrase!r} is not on screen\n{text}"
    panels = named_panels(lesson)
    for name in panels:
        if name in KEYS:
            assert KEYS[name] in flat, f"lesson {number}: the footer does not offer {KEYS[name]!r}"
            continue
        assert name in PANELS, f"lesson {number} names a panel the test does not know: {name!r}"
        selector, rows = PANELS[name]
        assert visible_rows(app, selector) >= rows, f"lesson {number}: {name} has too few rows\n{text}"
    if "Ragged mask" in panels:
        assert app.query_one(MaskCanvas).size.height >= 4, text  # a mask more than 3 rows tall
    record = app.history.current()
    in_step = {item.request_id for item in record.items}
    table = app.query_one(RequestsTable)
    in_table = {view.id for view in record.requests}
    for request in named_requests(lesson.watch) & in_table:  # one that joins later: in the records test
        if "Requests" in panels:  # its row in the table's window, not scrolled out of sight
            row = table.get_row_index(str(request))
            assert table.scroll_y <= row < table.scroll_y + table.size.height - 1, (
                f"lesson {number}: request {request}'s row is not in sight\n{text}")
        if "Ragged mask" in panels and request in in_step:
            raster = app.query_one(MaskCanvas).raster
            drawn = {record.items[i].request_id for i in raster.shown} if app.zoomed is False else {app.selected}
            assert request in drawn, f"lesson {number}: request {request} is not drawn in the mask\n{text}"


QUICK = (1, 3, 10)  # the lessons issue #29 found untrue: in the quick suite too, without colour


def lesson_modes():
    for number in range(1, len(LESSONS) + 1):
        for no_color in (True, False):
            slow = () if no_color and number in QUICK else (pytest.mark.slow,)
            yield pytest.param(number, no_color, marks=slow, id=f"{number}-{'NO_COLOR' if no_color else 'colour'}")


@pytest.mark.parametrize("number, no_color", lesson_modes())
def test_what_each_lesson_says_is_on_its_screen_at_80x24(number, no_color, monkeypatch):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    lesson = LESSONS[number - 1]

    def check(app):
        assert (color_mode(app) == NONE) == no_color
        check_on_screen(app, lesson, number)
    at_the_pause(number, check)


def run_records(lesson: Lesson, until: int):
    engine = load_scenario(lesson.scenario).build_engine(lesson.variant, device="cpu", plugins=lesson.plugins)
    records = {}
    while engine.has_unfinished() and len(records) <= until:
        record = engine.step()
        records[record.step] = record
    return records


def test_the_lessons_claims_about_later_steps_hold_in_the_records():
    # Lesson 1: request 8 joins the batch two steps after request 1 finished (step 11).
    records = run_records(LESSONS[0], 13)
    assert 1 in {r.id for r in records[11].requests if r.state == "finished"}
    assert 8 not in {i.request_id for i in records[12].items} and 8 in {i.request_id for i in records[13].items}
    # Lesson 6: the 4 decodes the cap left waiting at step 6 go first at step 7.
    records = run_records(LESSONS[5], 7)
    waited = {v.id for v in records[6].requests if v.reason == "decode cap"}
    assert len(waited) == 4 and waited <= {i.request_id for i in records[7].items}
    # Lesson 21: the 7 waiting at step 20 are all admitted by step 32.
    records = run_records(LESSONS[20], 32)
    assert records[20].waiting == 7 and records[32].waiting == 0
    # Lesson 13: request 2 finished at step 3.
    records = run_records(LESSONS[12], 3)
    assert 2 in {v.id for v in records[3].requests if v.state == "finished"}


@pytest.mark.parametrize("number", range(1, len(LESSONS) + 1))
def test_every_command_a_lesson_names_is_one_cbtui_takes(number):
    """`cbtui lesson 5 --variant chunk_16` said 'No such option'; each command parses, and the
    scenario, variant and plugins it names exist."""
    from cbtui.cli import main
    from cbtui.run.options import without_plugins

    lesson = LESSONS[number - 1]
    for args in commands(f"{lesson.watch} {lesson.question}"):
        with main.make_context("cbtui", list(args)) as ctx:  # raises on an unknown command or option
            name = ctx.invoked_subcommand or args[0]
            sub = main.get_command(ctx, name)
            sub_ctx = sub.make_context(name, args[1:], parent=ctx)
        params = sub_ctx.params
        if name == "lesson":
            assert 1 <= params["number"] <= len(LESSONS)
            scenario = load_scenario(LESSONS[params["number"] - 1].scenario)
        else:
            assert name == "scenario", args
            scenario = without_plugins(load_scenario(params["name"]), params.get("without") or ())
        variant = params.get("variant")
        assert variant is None or variant in scenario.variants, (args, list(scenario.variants))


def test_commands_are_found_in_a_text():
    assert commands("Rerun: cbtui lesson 5 --variant chunk_16: when?") == [["lesson", "5", "--variant", "chunk_16"]]
    assert commands("cbtui scenario live_budget --at 20:max_tokens_per_step=16: what") == [
        ["scenario", "live_budget", "--at", "20:max_tokens_per_step=16"]]
    assert named_requests("requests 0 and 2, request (3), request 4's") == {0, 2, 3, 4}
