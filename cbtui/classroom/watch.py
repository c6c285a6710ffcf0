"""A viewer of a shared run (`cbtui watch DIR`, and every browser tab of `cbtui serve`): the
dashboard, read-only, following the presenter's recording as it is written and showing what the
presenter's screen shows (the step in view, the selected request, paused or running). It runs no
engine; its keys change nothing but its own help and metrics screens.

Run as `python -m cbtui.classroom.watch DIR` by the web server for each browser tab.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Static

from engine.records.recording import RecordingError

from ..apps.dashboard import DashboardApp
from ..run.controller import MAX_SPEED
from ..widgets.help_screen import HelpScreen
from ..widgets.lesson_panel import LessonPanel, lesson_text
from ..widgets.memory_panel import MemoryPanel
from ..widgets.requests_table import RequestsTable
from .follow import FollowedRun, Following, NoRunYet
from .lessons import LESSONS
from .session import ENDED, PresenterState, Session

FOLLOW_S = 0.1  # how often the presenter's state is read
WAIT_POLL_S = 0.25  # how often a viewer started before the presenter looks for the run
WATCH_KEYS = (
    ("← / →", "walk back and forth through the steps on your own (the presenter's screen is not changed)"),
    ("space", "back to the presenter's step, following again"),
    ("t", "timeline: a row per request, a column per step"),
    ("m", "metrics of the run so far: TTFT / inter-token latency, throughput, memory"),
    ("?", "this help"),
    ("q", "leave (the run goes on for everyone else)"),
)


@dataclass(frozen=True)
class WatchedRun:
    """What the dashboard shows as the scenario (title, help text, question), from the run header."""

    title: str
    description: str
    question: str


def watched_run(following: Following) -> WatchedRun:
    header = following.current.header()
    about = ("You are watching a run someone else presents: this screen follows theirs (the step, the "
             "selected request) and its keys change nothing there. ←/→ walk through the steps on your own, "
             "space follows the presenter again, t shows the timeline, m the metrics, q leaves.")
    return WatchedRun(f"Watching: {header.title or 'a shared run'}",
                      "\n\n".join(t for t in (header.description, about) if t), header.question)


class WatchApp(DashboardApp, inherit_bindings=False):
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("left", "own_back", "Steps", key_display="←/→"),
        Binding("right", "own_forward", "Fwd", show=False),
        Binding("space", "follow", "Follow", key_display="space"),
        Binding("t", "timeline", "Timeline", show=False),
        Binding("m", "metrics", "Metrics"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, session: Session, following: Following, **kwargs):
        kwargs.setdefault("memory_poll_s", 3600.0)  # a recorded run: no live reading to poll
        super().__init__(watched_run(following), following.current, rebuild=following.restart, paused=False,
                         speed=MAX_SPEED, recorded=True, pages=following, **kwargs)
        self.session = session
        self.following = following
        self.presenter = session.read_state() or PresenterState()
        self._registration: Path | None = None
        # The run a restart was asked for (the controller takes it up soon after).
        self._restarting: FollowedRun | None = None
        self.on_own = False  # walking through history with ←/→ instead of following the presenter's step
        self._lesson_shown: tuple[int, bool] | None = None  # (lesson, folded) of the lesson text on screen

    def on_mount(self) -> None:  # (DashboardApp.on_mount runs too: Textual calls each class's handler)
        self._registration = self.session.register_viewer()
        self.set_interval(FOLLOW_S, self.follow_presenter)

    def on_unmount(self) -> None:
        self.session.unregister_viewer(self._registration)
        self._registration = None

    def follow_presenter(self) -> None:
        state = self.session.read_state() or self.presenter
        current = self.following.current
        if current is not self._restarting and (state.run != self.presenter.run or current.restarted()):
            self._restarting = current
            self.action_restart()  # the presenter pressed r: the recording began anew
        if state.selected != self.selected:
            self._select(state.selected)  # the presenter's choice wins over this viewer's arrows
        if state.zoomed != self.zoomed:
            self.zoomed = state.zoomed
        if state.memory is not None and state.memory != self.memory_reading:
            self.memory_reading = state.memory  # the presenter's machine, live
            self.query_one(MemoryPanel).show_reading(state.memory)
        speed = MAX_SPEED if state.speed is None else state.speed
        if speed != self.speed:
            self.speed = speed  # shown in the header; this viewer's reader keeps reading at once
        # what paused the presenter's run, for the event line ("paused: breakpoint step:13 hit")
        self.break_hit = None if state.break_step is None else (state.break_step, state.break_why)
        changed = state != self.presenter
        self.presenter = state
        if not self.on_own:
            self.history.view(state.viewing)
        self._show_lesson(state)
        if changed:
            self._draw()
            if state.state == ENDED:
                self.notify("The presenter has ended the session; this screen keeps the run so far (q leaves).",
                            timeout=30)

    def _show_lesson(self, state: PresenterState) -> None:
        """A presented lesson (cbtui serve --lesson N): its text above the panels and its layout."""
        number = state.lesson
        shown = None if number is None else (number, state.folded)
        if shown == self._lesson_shown:
            return
        self._lesson_shown = shown
        dashboard = self.screen_stack[0]
        if number is None:
            for panel in dashboard.query(LessonPanel):
                panel.remove()
            dashboard.set_class(False, "-fold-table")
            return
        lesson = LESSONS[number - 1]
        text = lesson_text(number, len(LESSONS), lesson.title, lesson.panel, lesson.watch, lesson.question,
                           state.folded, keys="none")
        panels = dashboard.query(LessonPanel)
        if panels:
            panels.first().update(text)
        else:
            dashboard.mount(LessonPanel(text, id="lesson"), after="#events")
        dashboard.set_class(lesson.fold_table, "-fold-table")

    def action_own_back(self) -> None:
        """A step back on this screen alone; space follows the presenter again."""
        if not self.history.can_go_back():
            return
        if not self.on_own:
            self.on_own = True
            self.notify("Your own steps now (←/→); space goes back to the presenter's.", timeout=4)
        self.history.back()
        self._draw()

    def action_own_forward(self) -> None:
        if self.on_own:
            self.history.forward()
            self._draw()

    def action_follow(self) -> None:
        self.on_own = False
        self.history.view(self.presenter.viewing)
        self._draw()

    def _select(self, request_id: int | None) -> None:
        """The presenter's selection, its row highlighted as on the presenter's screen."""
        table = self.query_one(RequestsTable)
        if request_id is None:
            table.action_clear_selection()
        else:
            table.select(request_id)
        self.selected = request_id

    def _poll_memory(self) -> None:
        if self.presenter.memory is None:  # until the presenter's reading comes: "no live reading"
            super()._poll_memory()

    def run_state(self) -> str:
        """The presenter's, not this viewer's (whose reader is always running)."""
        if self.engine_state == "failed":
            return "failed"
        return self.presenter.state

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return True

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            s = self.scenario
            self.push_screen(HelpScreen(s.title, s.description, s.question, WATCH_KEYS))


def open_session(directory: str, wait_s: float = 10.0) -> tuple[Session, Following]:
    """The session at `directory` (a `cbtui serve` folder, or its run.jsonl); RecordingError says why
    not, NoRunYet when the presenter has not started it (yet)."""
    path = os.path.abspath(directory)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    session = Session(path)
    if not os.path.isdir(path):
        if os.path.lexists(path):
            raise RecordingError(f"{directory}: not a folder; give the folder `cbtui serve` said to watch")
        raise NoRunYet(f"{directory}: no such folder; give the folder `cbtui serve` said to watch")
    return session, Following(session.recording_path, wait_s)


class WaitingApp(App[tuple[Session, Following] | None]):
    """`cbtui watch DIR` before the presenter has started: says so, and opens the run once it is
    there (the session's folder, its recording and the run's first line), however long that takes."""

    BINDINGS = [Binding("q,escape", "quit", "Leave"), Binding("ctrl+c", "quit", "Leave", show=False, priority=True)]
    CSS = "#waiting { width: 1fr; height: 1fr; content-align: center middle; text-align: center; padding: 1 2; }"

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.error: str | None = None  # a folder that can never hold a run (a link, a file): why
        self.checks = 0

    def compose(self) -> ComposeResult:
        yield Static(self._text("waiting for its folder"), id="waiting")
        yield Footer(compact=True, show_command_palette=False)

    def _text(self, missing: str) -> str:
        return (f"Waiting for the presenter…\n\n{self.directory}: {missing}.\nThis screen opens the run as soon as "
                f"the presenter starts `cbtui serve --session {self.directory}`.\n\nq leaves.")

    def on_mount(self) -> None:
        self.set_interval(WAIT_POLL_S, self.check)

    def check(self) -> None:
        self.checks += 1
        try:
            self.exit(open_session(self.directory, wait_s=0))
        except NoRunYet as exc:
            missing = "no folder yet" if "no such folder" in str(exc) else "no run in it yet"
            self.query_one("#waiting", Static).update(self._text(missing))
        except RecordingError as exc:
            self.error = str(exc)
            self.exit(None)

    def action_quit(self) -> None:  # type: ignore[override]  # App's is async
        self.exit(None)


def run_watch(directory: str) -> int:
    """Opens a viewer on the session, after a waiting screen while the presenter has not started it
    (in a terminal; elsewhere that is one line and exit 2). Returns the exit code."""
    from engine.records.text import visible

    in_terminal = sys.stdin.isatty() and sys.stdout.isatty()  # (a browser's viewer is not)
    try:
        # a browser's viewer waits a little for a run begun anew (r); a terminal's says it waits
        session, following = open_session(directory, wait_s=0 if in_terminal else 10.0)
    except NoRunYet as exc:
        if not in_terminal:
            print(f"cbtui: error: {visible(str(exc))}", file=sys.stderr)
            return 2
        waiting = WaitingApp(directory)
        opened = waiting.run()
        if opened is None:
            if waiting.error is not None:
                print(f"cbtui: error: {visible(waiting.error)}", file=sys.stderr)
                return 2
            return 0
        session, following = opened
    except RecordingError as exc:
        print(f"cbtui: error: {visible(str(exc))}", file=sys.stderr)
        return 2
    app = WatchApp(session, following)
    app.run()
    session.unregister_viewer(app._registration)  # a viewer killed mid-run leaves it: the presenter clears it
    return app.return_code or 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m cbtui.classroom.watch DIR", file=sys.stderr)
        sys.exit(2)
    code = run_watch(sys.argv[1])
    sys.stdout.flush()
    os._exit(code)  # skip the interpreter's slow teardown of textual
