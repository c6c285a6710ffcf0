"""`cbtui lessons` and `cbtui lesson N`: each lesson is the dashboard on its scenario, run at full
speed to the lesson's breakpoint and paused there, with the lesson's text above the panels.

Keys beside the dashboard's: `]` next lesson, `[` previous, `l` the lessons menu, `t` folds the
lesson's text to one line (`n` stays "one step"). A lesson's app ends with where to go next;
`run_lessons` opens that one.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, OptionList, Static

from scenarios import load_scenario

from ..apps.dashboard import DashboardApp, run_dashboard
from ..run.breakpoints import parse
from ..run.controller import MAX_SPEED
from ..widgets.help_screen import KEYS, HelpScreen
from ..widgets.lesson_panel import LessonPanel, lesson_text
from ..widgets.requests_table import RequestsTable
from .lessons import LESSONS, Lesson, lesson_line

LESSON_HELP_KEYS = (
    *((key, what) if key != "t" else ("t", "fold / unfold the lesson's text (the timeline: ctrl+p, Timeline)")
      for key, what in KEYS),
    ("] / [", "next / previous lesson"),
    ("l", "the lessons menu"),
)
LESSON_SPEED = 2.0  # steps per second once the lesson's step is reached: slow enough to follow
MENU = "menu"


class LessonApp(DashboardApp):
    BINDINGS = [
        Binding("right_square_bracket", "lesson(1)", "Next lesson", key_display="]", show=False),
        Binding("left_square_bracket", "lesson(-1)", "Previous lesson", key_display="[", show=False),
        Binding("l", "lessons_menu", "Lessons", show=False),
        Binding("t", "fold_lesson", "Fold the lesson text", show=False),
        # A lesson cannot fork (the fork box says why), and lessons send the class to the metrics:
        # m takes f's and d's places in the footer, which fits 80 columns (both stay in the help)
        Binding("f", "fork", "Fork", show=False),
        Binding("d,enter", "detail", "Text", key_display="d", show=False),
        Binding("m", "metrics", "Metrics"),
    ]

    def __init__(self, scenario, engine, lesson: Lesson, number: int, outcome: list[int | str], **kwargs):
        """`outcome` gets where to go when this app ends: a lesson number, MENU, or nothing (quit)."""
        super().__init__(scenario, engine, paused=False, speed=MAX_SPEED,
                         breakpoints=[parse(lesson.break_on)], **kwargs)
        self.lesson, self.number, self.outcome = lesson, number, outcome
        variant = kwargs.get("variant")
        # --variant: the text was written for the lesson's own run, and the title says this is another
        self.other_run = variant if variant and variant != lesson.variant else None
        self.folded = False
        self._staged = False  # the lesson's selection and zoom are applied once its step is reached

    LESSON_KEYS = "all"  # the lesson keys its title names (lesson_text)

    def _lesson_text(self):
        lesson = self.lesson
        title = lesson.title if self.other_run is None else \
            f"{lesson.title} · variant {self.other_run}: compare with the text"
        return lesson_text(self.number, len(LESSONS), title, lesson.panel, lesson.watch, lesson.question,
                           self.folded, self.LESSON_KEYS)

    def on_mount(self) -> None:
        self.mount(LessonPanel(self._lesson_text(), id="lesson"), after="#events")
        self.screen.set_class(self.lesson.fold_table, "-fold-table")  # (the rule is LessonPanel's)

    def on_unmount(self) -> None:  # before DashboardApp's (Textual calls each class's handler in turn)
        self.controller.stop(timeout=1.0)
        if not self.controller.thread.is_alive():  # the next lesson may start a sharded engine of its own
            self.controller.close_engine()

    def action_fold_lesson(self) -> None:
        self.folded = not self.folded
        self.query_one(LessonPanel).update(self._lesson_text())

    def watch_paused(self) -> None:
        super().watch_paused()
        if self.paused and self.break_hit is not None and self.speed == MAX_SPEED:
            self.speed = LESSON_SPEED  # the lesson's step is reached: from here on, at a pace to follow
            self.controller.set_speed(LESSON_SPEED)
            self._stage()

    def _stage(self) -> None:
        """At the lesson's step: the request the text is about selected (its row in view), the mask
        zoomed on it where the lesson asks, as a student would with ↓ and z. Once: a restart keeps
        whatever the student chose since."""
        if self._staged or self.lesson.select is None:
            return
        self._staged = True
        self.query_one(RequestsTable).select(self.lesson.select)
        self.selected = self.lesson.select
        self.zoomed = self.lesson.zoom

    def action_help(self) -> None:
        """The dashboard's help, with the lesson's keys: t folds the text here (the timeline is in
        the command palette, ctrl+p)."""
        if not isinstance(self.screen, HelpScreen):
            s = self.scenario
            self.push_screen(HelpScreen(s.title, s.description, s.question, LESSON_HELP_KEYS))

    def action_lesson(self, delta: int) -> None:
        target = self.number + delta
        self.outcome.append(target if 1 <= target <= len(LESSONS) else MENU)
        self.action_quit()

    def action_lessons_menu(self) -> None:
        self.outcome.append(MENU)
        self.action_quit()


class LessonMenu(App[int | None]):
    """Pick a lesson: enter opens it; q or escape quits."""

    BINDINGS = [Binding("q,escape", "quit_menu", "Quit")]
    CSS = "OptionList { height: 1fr; } #menu-help { padding: 0 1; background: $boost; }"

    def __init__(self, highlight: int = 1):
        super().__init__()
        self._highlight = highlight

    def compose(self) -> ComposeResult:
        yield Static("cbtui lessons: ↑/↓ and enter open a lesson. In a lesson: ] next, [ previous, "
                     "l this menu, t fold the text, ? help, q quit.", id="menu-help")
        yield OptionList(*[lesson_line(i, lesson) for i, lesson in enumerate(LESSONS, 1)])
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = self._highlight - 1
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.exit(event.option_index + 1)

    def action_quit_menu(self) -> None:
        self.exit(None)


def _parts(lesson: Lesson, model: str | None = None, variant: str | None = None):
    """The lesson's scenario, a fresh engine for it, and how to build another (`r`). `model` (--model)
    runs instead of the scenario's preset; `variant` (--variant) one of its [compare] variants instead
    of the lesson's (ScenarioError when the scenario has no such variant)."""
    scenario = load_scenario(lesson.scenario, model=model)
    variant = variant or lesson.variant

    def rebuild():
        return scenario.build_engine(variant, plugins=lesson.plugins, model=model)
    return scenario, rebuild(), rebuild


def open_lesson(number: int, outcome: list[int | str], model: str | None = None, variant: str | None = None,
                **kwargs) -> LessonApp:
    """The app of lesson `number` (1-based), on a fresh engine of its scenario."""
    lesson = LESSONS[number - 1]
    scenario, engine, rebuild = _parts(lesson, model, variant)
    return LessonApp(scenario, engine, lesson, number, outcome, rebuild=rebuild,
                     variant=variant or lesson.variant, **kwargs)


def run_lessons(start: int | None, model: str | None = None, variant: str | None = None) -> int:
    """From the menu (start None) or lesson `start`, until the student quits (ScenarioError: a lesson's
    scenario refuses `model`). `variant`: lesson `start` runs that variant of its scenario (the lessons
    it leads to run as written). Returns the exit code."""
    number: int | str | None = MENU if start is None else start
    last = start or 1
    while True:
        if number == MENU:
            number = LessonMenu(highlight=last).run()
            if number is None:
                return 0
        assert isinstance(number, int)
        outcome: list[int | str] = []  # where the lesson's app says to go next (a number, or MENU)
        lesson, last = LESSONS[number - 1], number
        chosen = variant if number == start else None
        scenario, engine, rebuild = _parts(lesson, model, chosen)

        def make(scenario, engine, _rebuild, lesson=lesson, number=number, outcome=outcome, rebuild=rebuild,
                 chosen=chosen):
            return LessonApp(scenario, engine, lesson, number, outcome, rebuild=rebuild,
                             variant=chosen or lesson.variant)
        code = run_dashboard(scenario, engine, app_factory=make)
        if code or not outcome:
            return code
        number = outcome[-1]
