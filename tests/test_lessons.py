"""Every lesson opens its scenario, pauses at its step, and shows what it tells the student to watch;
the lesson keys move between lessons; `cbtui lessons --list` and `cbtui lesson N` from the shell."""

import asyncio
import html
import re
import subprocess
import sys
import time

import pytest
from dashboard_helpers import NO_GPU, wait_until

from cbtui.classroom.lesson_app import LESSON_SPEED, MENU, LessonMenu, open_lesson
from cbtui.classroom.lessons import LESSONS
from cbtui.run.breakpoints import parse
from engine.profiling.gpu_memory import FakeProbe
from scenarios import load_scenario

CHAR_WIDTH = 12.2  # Textual's SVG export: 0.61 of its 20-pixel font


def screen_text(app) -> str:
    """The screen as text, row by row (from the SVG screenshot: what a person would read)."""
    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        rows.setdefault(float(m[2]), []).append((float(m[1]), html.unescape(m[3]).replace("\xa0", " ")))
    lines = []
    for _, parts in sorted(rows.items()):
        line = ""
        for x, text in sorted(parts):
            line = line.ljust(round(x / CHAR_WIDTH)) + text  # gaps between runs are spaces on screen
        lines.append(line)
    return "\n".join(lines)


def expected_step(number: int) -> int:
    """Where the lesson's breakpoint fires in a plain run of its scenario (with its plugins)."""
    lesson = LESSONS[number - 1]
    engine = load_scenario(lesson.scenario).build_engine(lesson.variant, device="cpu", plugins=lesson.plugins)
    bp, previous = parse(lesson.break_on), None
    while engine.has_unfinished():
        record = engine.step()
        if bp.fires(record, previous):
            return record.step
        previous = record
    raise AssertionError(f"lesson {number}'s breakpoint {lesson.break_on} never fires")


def squeeze(text: str) -> str:
    return " ".join(text.split())


def test_every_mechanism_has_a_lesson_on_a_builtin_scenario_with_a_valid_breakpoint():
    assert 12 <= len(LESSONS) <= 24  # the seed's path, and one lesson for each mechanism added since
    scenarios = {lesson.scenario for lesson in LESSONS}
    assert {"speculative", "shared_prefix", "sharded_kv", "kv_pressure", "static_vs_continuous",
            "live_budget"} <= scenarios
    for lesson in LESSONS:
        load_scenario(lesson.scenario)
        parse(lesson.break_on)
        assert lesson.question.strip() and lesson.watch.strip() and lesson.panel.strip()


@pytest.mark.slow
@pytest.mark.parametrize("number", range(1, len(LESSONS) + 1))
def test_each_lesson_pauses_at_its_step_with_what_to_watch_on_screen(number):
    lesson = LESSONS[number - 1]
    step = expected_step(number)

    async def scenario():
        outcome = []
        app = open_lesson(number, outcome, probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.break_hit is not None, timeout=30)
            await pilot.pause(0.2)
            assert app.paused and app.history.current().step == step
            text = screen_text(app)
            assert re.search(rf"Step {step} (paused|finished)", text)  # the last lesson pauses on the last step
            assert f"paused: breakpoint {parse(lesson.break_on).spec} hit" in text
            flat = squeeze(text)
            assert f"Lesson {number}/{len(LESSONS)}: {lesson.title}" in flat
            assert squeeze(lesson.question) in flat
            assert lesson.look_for in flat, text
            await pilot.press("q")
        assert outcome == []
    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.parametrize("number, key, goes_to", [
    (1, "right_square_bracket", 2), (2, "left_square_bracket", 1), (1, "left_square_bracket", MENU),
    (len(LESSONS), "right_square_bracket", MENU), (5, "l", MENU),
])
def test_lesson_keys_say_where_to_go_next(number, key, goes_to):
    async def scenario():
        outcome = []
        app = open_lesson(number, outcome, probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.history.current() is not None)
            await pilot.press(key)
            await pilot.pause(0.1)
        assert outcome == [goes_to]
    asyncio.run(scenario())


def test_t_folds_the_lesson_text_and_n_still_steps():
    async def scenario():
        app = open_lesson(6, [], probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.break_hit is not None, timeout=30)
            assert "Ask:" in screen_text(app)
            await pilot.press("t")
            await pilot.pause(0.1)
            assert "Ask:" not in screen_text(app) and "Lesson 6/" in screen_text(app)
            step = app.history.current().step
            await pilot.press("n")
            await wait_until(pilot, lambda: app.history.current().step == step + 1)
            await pilot.press("q")
    asyncio.run(scenario())


def test_r_runs_the_lesson_to_its_step_again():
    async def scenario():
        app = open_lesson(8, [], probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.break_hit is not None, timeout=30)
            step = app.history.current().step
            await pilot.press("space")  # on at the lesson's pace, then start over
            await wait_until(pilot, lambda: app.history.current().step > step, timeout=30)
            started = time.monotonic()
            await pilot.press("r")
            # at full speed again: the run starts over and pauses on the lesson's step at once, not
            # after step / LESSON_SPEED seconds (4)
            await wait_until(pilot, lambda: app.paused and app.break_hit is not None
                             and len(app.history) == step + 1, timeout=30)
            assert time.monotonic() - started < (step - 1) / LESSON_SPEED
            assert app.history.current().step == step and app.speed == LESSON_SPEED
            await pilot.press("q")
    asyncio.run(scenario())


def test_the_menu_opens_the_lesson_picked():
    async def scenario():
        app = LessonMenu()
        async with app.run_test(size=(80, 24)) as pilot:
            assert "Requests join and leave the batch" in screen_text(app)
            await pilot.press("down", "down", "enter")
        return app.return_value
    assert asyncio.run(scenario()) == 3


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=120)


def test_lessons_list_prints_them_numbered_one_a_line():
    done = cli("lessons", "--list")
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == len(LESSONS)
    for number, (line, lesson) in enumerate(zip(lines, LESSONS, strict=True), 1):
        assert line.split(". ", 1) == [f"{number:>2}", f"{lesson.title} ({lesson.scenario})"] and len(line) <= 80


@pytest.mark.slow
@pytest.mark.parametrize("number", ["0", str(len(LESSONS) + 1)])
def test_a_lesson_that_does_not_exist_is_one_line_and_exit_2(number):
    done = cli("lesson", number)
    assert done.returncode == 2 and done.stderr == (
        f"cbtui: error: lesson {number}: there are lessons 1 to {len(LESSONS)} (cbtui lessons --list)\n")


@pytest.mark.parametrize("number", range(1, len(LESSONS) + 1))
def test_each_lesson_text_fits_four_lines_at_80_columns(number):
    """The lesson panel keeps at most 4 rows of an 80x24 terminal (78 columns inside its padding)."""
    from rich.console import Console

    from cbtui.widgets.lesson_panel import lesson_text

    lesson = LESSONS[number - 1]
    console = Console(width=78, legacy_windows=False)
    group = lesson_text(number, len(LESSONS), lesson.title, lesson.panel, lesson.watch, lesson.question)
    lines = console.render_lines(group, pad=False)
    assert len(lines) <= 4, ["".join(s.text for s in line) for line in lines]
    assert "".join(s.text for s in lines[0]).startswith(f"Lesson {number}/{len(LESSONS)}: {lesson.title}")


def test_lessons_run_on_the_model_given():
    """--model: every lesson's scenario on that model (r rebuilds it there too); a preset here, for speed."""
    from cbtui.classroom.lesson_app import _parts

    scenario, engine, rebuild = _parts(LESSONS[0], "micro")
    assert engine.header().model == "micro" and rebuild().header().model == "micro"
    assert _parts(LESSONS[0])[1].header().model == "tiny"


@pytest.mark.parametrize("args", [["lesson", "1"], ["lessons"]])
def test_a_bad_model_for_the_lessons_is_one_line_and_exit_2_before_any_screen(args, tmp_path):
    from click.testing import CliRunner

    from cbtui.cli import main

    result = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"cbtui: error: {tmp_path / 'nowhere'}: no such directory")


def test_a_lesson_runs_the_variant_its_text_names():
    """Lesson 5 says `cbtui lesson 5 --variant chunk_16`: the lesson opens on that variant, which cuts
    the long prompt into 16-token chunks, paused at the lesson's step."""
    async def scenario():
        app = open_lesson(5, [], variant="chunk_16", probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.break_hit is not None, timeout=30)
            record = app.history.current()
            assert record.step == 4 and max(i.num_tokens for i in record.items if i.request_id == 0) == 16
            text = screen_text(app)
            assert "variant chunk_16" in text.splitlines()[0]  # the header
            assert f"Lesson 5/{len(LESSONS)}: Chunk size and time to first token · variant chunk_16" in text
            await pilot.press("q")
    asyncio.run(scenario())


def test_a_variant_the_lesson_scenario_lacks_is_one_line_and_exit_2():
    from click.testing import CliRunner

    from cbtui.cli import main

    result = CliRunner().invoke(main, ["lesson", "5", "--variant", "chunk_7"])
    assert result.exit_code == 2 and result.stderr == (
        "cbtui: error: --variant chunk_7: lesson 5's scenario long_prompt has no such variant "
        "(it has: chunk_32, chunk_16)\n")


def test_a_lessons_help_says_what_its_keys_do():
    """t folds a lesson's text (in the dashboard it opens the timeline): the help says so, and names
    the lesson keys."""
    from cbtui.classroom.lesson_app import LESSON_HELP_KEYS

    keys = dict(LESSON_HELP_KEYS)
    assert keys["t"].startswith("fold / unfold the lesson's text") and "Timeline" in keys["t"]
    assert "] / [" in keys and "l" in keys and "timeline: a row per request" not in " ".join(keys.values())
