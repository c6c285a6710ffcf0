"""Two runs of one scenario on one screen (`cbtui compare`), in lockstep.

One EngineController drives a `Lockstep` of the two engines, so one key steps both and the two
runs stay on the same step number. Each run has its own pane (the dashboard's panels, its own
history and running totals) with a header naming the variant; a difference panel under them
compares the runs' figures at the step on screen. Wide terminals show the panes side by side;
narrower ones show one pane at a time (tab switches) with the difference always in view.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.events import Resize
from textual.reactive import reactive
from textual.widgets import Footer, Static

from engine.records import StepRecord
from engine.records.summary import RunTotals

from ..render.colors import color_mode
from ..render.metrics_view import RATE_WINDOW, processed_rate
from ..run.breakpoints import Breakpoint
from ..run.controller import MAX_SPEED, EngineController, EngineStatus
from ..run.history import History
from ..run.lockstep import Lockstep, PairBreakpoints, PairStep, RunFailed
from ..widgets.budget import BudgetBar
from ..widgets.error_panel import ErrorPanel
from ..widgets.header import HeaderInfo, StepHeader
from ..widgets.help_screen import HelpScreen
from ..widgets.kv_grid import KVGrid
from ..widgets.mask import MaskCanvas
from ..widgets.mask_legend import MaskLegend
from ..widgets.requests_table import RequestSelected, RequestsTable
from ..widgets.run_difference import RunDifference, RunFigures
from .dashboard import MIN_HEIGHT, MIN_WIDTH, leave_a_core_for_the_ui, run_until_quit
from .engine_fed import DEFAULT_SPEED, SPEEDS, EngineFedApp, speed_label

SIDE_BY_SIDE_WIDTH = 140  # two panes of 70 columns and more; below it one pane at a time
HISTORY_LIMIT = 1000
RUN_FAILED = f"{RunFailed.__module__}.{RunFailed.__qualname__}: "
COMPARE_KEYS = (
    ("space", "pause / resume both runs (from a past step: back to live)"),
    ("n", "one step of both runs (while paused)"),
    ("← / →", "while paused: both runs to the previous / next step; → at the newest step runs one"),
    ("tab", "the other run, when the two do not fit side by side (below 140 columns)"),
    ("+ / -", "faster / slower"),
    ("↑ / ↓", "select a request: highlighted in both runs (the same workload)"),
    ("r", "restart both runs"),
    ("?", "this help"),
    ("q", "quit"),
)
ABOUT_COMPARE = ("Two runs of this scenario in lockstep, one step each per step. The panel at the bottom "
                 "compares them at the step on screen: each run's steps so far, finished requests, mean "
                 "time to first token (in steps), padding (static batching) and preemptions, and the second "
                 "minus the first; at the end they equal what each run's headless summary says.")


class RunPane(Vertical):
    """One run: a header naming its variant, then the dashboard's panels for the step on screen."""

    def __init__(self, letter: str, name: str, settings: str, engine_label: str, requests: int, **kwargs):
        super().__init__(classes="pane", **kwargs)
        self.letter, self.variant_name, self.settings = letter, name, settings
        self.engine_label = engine_label
        self.requests = requests
        self.history = History(HISTORY_LIMIT)
        self.reset()

    def reset(self) -> None:
        self.history.clear()
        self.totals = RunTotals()
        self.done = False
        self._figures: OrderedDict[int, RunFigures] = OrderedDict()  # step -> figures after it, bounded

    def observe(self, record: StepRecord) -> None:
        self.history.append(record)
        self.totals.observe(record)
        self._figures[record.step] = RunFigures.of(self.totals)
        if len(self._figures) > HISTORY_LIMIT:
            self._figures.popitem(last=False)

    def figures(self) -> RunFigures:
        """The figures after the step on screen (the newest, when that step is no longer kept)."""
        record = self.history.current()
        if record is None:
            return RunFigures()
        return self._figures.get(record.step) or RunFigures.of(self.totals)

    def compose(self) -> ComposeResult:
        yield StepHeader(classes="pane-header")
        with Horizontal(classes="top"):
            with Vertical(classes="panel mask-panel") as panel:
                panel.border_title = "Ragged mask"
                yield MaskCanvas()
                yield MaskLegend()
            with Vertical(classes="side"):
                with Vertical(classes="panel budget-panel") as panel:
                    panel.border_title = "Token budget"
                    yield BudgetBar()
                with Vertical(classes="panel kv-panel") as panel:
                    panel.border_title = "KV cache"
                    yield KVGrid()
        with Vertical(classes="panel requests-panel") as panel:
            panel.border_title = "Requests"
            yield RequestsTable()

    def draw(self, run_state: str, speed: str, selected: int | None, newest: int | None) -> None:
        """`newest`: the newest step, while the panes show an older one (the header says so)."""
        record = self.history.current()
        title = f"{self.letter} {self.variant_name}" + (f" · {self.settings}" if self.settings else "")
        state = "finished" if self.done and run_state != "failed" else run_state
        rate = processed_rate(self.history.recent(RATE_WINDOW))
        common: dict[str, Any] = dict(scenario=title, engine=self.engine_label, run_state=state, speed=speed,
                                      newest=newest, tokens_per_second=rate)
        if record is None:
            info = HeaderInfo(step=None, **common)
        else:
            info = HeaderInfo(step=record.step, running=record.running, waiting=record.waiting,
                              finished=record.finished_total, pending=record.pending,
                              notes=tuple(record.annotations), errors=tuple(record.errors), **common)
        self.query_one(StepHeader).show(info)
        self.query_one(BudgetBar).show(record)
        budget = f"Token budget: {record.budget} per step" if record else "Token budget"
        panel = self.query_one(".budget-panel")
        if panel.border_title != budget:
            panel.border_title = budget
        self._draw_mask(record, selected)
        self.query_one(KVGrid).show(record.kv if record else None, selected)
        if record is not None:
            self.query_one(RequestsTable).show(record.requests)

    def _draw_mask(self, record: StepRecord | None, selected: int | None) -> None:
        items = list(record.items) if record else []
        canvas = self.query_one(MaskCanvas)
        canvas.show(items, selected)
        self.query_one(MaskLegend).show(items, None, canvas.current_raster(), selected, color_mode(self.app))

    @on(MaskCanvas.Rescaled)
    def _redraw_legend(self) -> None:
        with contextlib.suppress(NoMatches):
            self._draw_mask(self.history.current(), getattr(self.app, "selected", None))


class CompareApp(EngineFedApp):
    CSS_PATH = Path(__file__).with_name("compare.tcss")
    TITLE = "cbtui compare"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("space", "toggle_pause", "Pause", key_display="space"),
        Binding("n", "step_once", "Step"),
        Binding("left", "history_back", "Steps", key_display="←/→"),
        Binding("right", "history_forward", "Fwd", key_display="→", show=False),
        Binding("tab", "other_run", "Other run", priority=True),
        Binding("plus,equals_sign", "faster", "Speed", key_display="+/-"),
        Binding("minus", "slower", "Slower", key_display="-", show=False),
        Binding("r", "restart", "Restart"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    STATEFUL_ACTIONS = ("toggle_pause", "step_once", "history_back", "history_forward", "other_run", "faster",
                        "slower")

    selected: reactive[int | None] = reactive(None, init=False)
    shown: reactive[int] = reactive(0, init=False)  # the pane in view when they do not fit side by side

    def __init__(self, scenario, variants, engines, rebuild=None, paused: bool = False,
                 speed: float | None = None, max_steps: int | None = None, breakpoints: Iterable[Breakpoint] = ()):
        """`variants`: the two scenarios.variant_pair.Variant; `engines`: their engines (a Lockstep is
        made of them); `rebuild`: the two fresh engines, for r; `breakpoints` pause both runs (step:N:
        the dashboard's fork opens on the step it forked at)."""
        super().__init__(paused, speed)
        self.scenario = scenario
        self.requests = len(scenario.requests)
        labels = [e.header().label() for e in engines]
        self.panes = tuple(RunPane(letter, v.name, v.settings(), label, self.requests, id=f"pane-{letter.lower()}")
                           for letter, v, label in zip("AB", variants, labels, strict=True))
        self.viewing: int | None = None  # the step both panes show; None follows the newest
        names = [f"{letter} {v.name}" for letter, v in zip("AB", variants, strict=True)]
        lockstep_rebuild = None if rebuild is None else (lambda: Lockstep(rebuild(), names))
        self.controller = EngineController(Lockstep(engines, names), self._to_inbox, self._to_inbox,
                                           rebuild=lockstep_rebuild, paused=paused, speed=self.speed,
                                           max_steps=max_steps, breakpoints=PairBreakpoints(breakpoints))

    def compose(self) -> ComposeResult:
        yield ErrorPanel(id="error")
        with Horizontal(id="panes"):
            yield from self.panes
        yield RunDifference(id="difference")
        yield Static(f"The terminal is too small: compare needs at least {MIN_WIDTH}x{MIN_HEIGHT}. "
                     "Enlarge the window (q quits).", id="too-small")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self._fit_layout(self.size.width, self.size.height)
        self.panes[0].query_one(RequestsTable).focus()
        self.controller.start()
        self._draw()

    def on_resize(self, event: Resize) -> None:
        self._fit_layout(event.size.width, event.size.height)  # self.size is updated after this handler

    def _fit_layout(self, width: int, height: int) -> None:
        screen = self.screen
        screen.set_class(width < MIN_WIDTH or height < MIN_HEIGHT, "-too-small")
        screen.set_class(width < SIDE_BY_SIDE_WIDTH, "-tabbed")
        screen.set_class(height < 40, "-compact")
        self._show_panes()

    def side_by_side(self) -> bool:
        return not self.screen.has_class("-tabbed")

    def _show_panes(self) -> None:
        for i, pane in enumerate(self.panes):
            pane.set_class(i != self.shown, "-hidden")

    # -- from the engine thread, through the inbox ---------------------------------------------
    def _take_step(self, step: PairStep) -> None:
        for pane, record, done in zip(self.panes, step.records, step.done, strict=True):
            if record is not None:
                pane.observe(record)
            pane.done = done

    def _take_status(self, status: EngineStatus) -> None:
        super()._take_status(status)
        if status.kind == "started":
            for pane in self.panes:
                pane.reset()
            self.viewing = None
        elif status.kind == "breakpoint":  # the engine thread paused itself on this step
            self.paused = True
            if self.speed == MAX_SPEED:  # the step to look at is reached: from here on, a pace to follow
                self.speed = DEFAULT_SPEED
                self.controller.set_speed(DEFAULT_SPEED)
        elif status.kind == "failed":
            # The controller names the exception's type: RunFailed's message names the run and the real one.
            self.error = status.message.removeprefix(RUN_FAILED)

    # -- drawing -------------------------------------------------------------------------------
    def newest_step(self) -> int | None:
        steps = [s for s in (p.history.newest_step() for p in self.panes) if s is not None]
        return max(steps, default=None)

    def oldest_step(self) -> int | None:
        steps = [s for s in (p.history.oldest_step() for p in self.panes) if s is not None]
        return min(steps, default=None)

    def _draw_panels(self) -> None:
        self.query_one(ErrorPanel).show_error(self.error)
        newest = self.newest_step() if self.viewing is not None else None
        for pane in self.panes:
            pane.history.view(self.viewing)
            pane.draw(self.run_state(), speed_label(self.speed), self.selected, newest)
        a, b = self.panes
        self.query_one(RunDifference).show((a.variant_name, b.variant_name), (a.figures(), b.figures()),
                                           self.requests)

    def watch_selected(self) -> None:
        self._draw()

    def watch_shown(self) -> None:
        self._show_panes()
        self.panes[self.shown].query_one(RequestsTable).focus()

    @on(RequestSelected)
    def _select_request(self, event: RequestSelected) -> None:
        self.selected = event.request_id  # the same workload runs in both: highlighted in both

    # -- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        stopped = not self._can_step()
        enabled = {
            "toggle_pause": not stopped or self._showing_past(),
            "step_once": self.paused and not stopped,
            "history_back": (self.paused or stopped) and self._can_go_back(),
            "history_forward": (self.paused or stopped) and (self.viewing is not None or not stopped),
            "other_run": not self.side_by_side() if self.screen_stack else True,
            "faster": self.speed < SPEEDS[-1],
            "slower": self.speed > SPEEDS[0],
        }.get(action, True)
        return True if enabled else None

    def _can_go_back(self) -> bool:
        step = self.newest_step() if self.viewing is None else self.viewing
        oldest = self.oldest_step()
        return step is not None and oldest is not None and step > oldest

    def _showing_past(self) -> bool:
        return self.viewing is not None

    def _go_live(self) -> None:
        self.viewing = None

    def action_history_back(self) -> None:
        step = self.newest_step() if self.viewing is None else self.viewing
        oldest = self.oldest_step()
        if step is not None and oldest is not None and step > oldest:
            self.viewing = step - 1
        self._draw()
        self._refresh_bindings_if_changed()

    def action_history_forward(self) -> None:
        newest = self.newest_step()
        if self.viewing is None:
            if self._can_step():
                self.controller.step_once()  # at the newest step: → runs the next one
        else:
            self.viewing = None if newest is None or self.viewing + 1 >= newest else self.viewing + 1
        self._draw()
        self._refresh_bindings_if_changed()

    def action_other_run(self) -> None:
        self.shown = 1 - self.shown

    def action_restart(self) -> None:
        self.engine_state, self.error, self.viewing = "starting", None, None
        self._restart_at_start_speed()
        self._draw()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            s = self.scenario
            self.push_screen(HelpScreen(s.title, f"{s.description}\n\n{ABOUT_COMPARE}", s.question, COMPARE_KEYS))

    def action_quit(self) -> None:  # type: ignore[override]  # App's is async; Textual runs a sync one too
        self.controller.stop(timeout=1.0)
        self.exit()

    def on_unmount(self) -> None:
        self.controller.stop(timeout=1.0)


def run_compare(scenario, variants, overrides: dict, paused: bool = False, speed: float | None = None,
                max_steps: int | None = None, breakpoints: Iterable[Breakpoint] = ()) -> int:
    """Opens the side-by-side view; returns the exit code (0 after q, 128 + N after signal N)."""

    def build():
        return [v.build_engine(**overrides) for v in variants]

    engines = build()
    header = engines[0].header()
    if header.device == "cpu" and header.model == "tiny":
        import torch

        torch.set_num_threads(1)  # as `cbtui scenario`: the tiny model's ops are too small for threads
    else:
        leave_a_core_for_the_ui(engines[0])
    app = CompareApp(scenario, variants, engines, rebuild=build, paused=paused, speed=speed, max_steps=max_steps,
                     breakpoints=breakpoints)
    signalled = run_until_quit(app)  # as the dashboard runs: signals quit as q does
    if signalled:
        return 128 + signalled
    return app.return_code or 0
