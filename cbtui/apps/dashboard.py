"""The dashboard: a Textual app that shows each scheduler step of an engine running beside it.

The app only consumes StepRecords. `EngineController` owns the engine on its own thread and feeds
the app through an inbox (engine_fed.py: drained a batch at a time, frames paced to `MAX_FPS`);
the app keeps a bounded history of the records and draws the step on screen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from textual import events, on
from textual.app import ComposeResult, SuspendNotSupported, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.geometry import Size
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.live_changes import changed_config, parse_setting
from engine.profiling.detailed_memory_profiler import DetailedMemoryProfiler
from engine.profiling.gpu_memory import MemoryProbe, RecordedProbe, open_probe
from engine.profiling.nvml import Nvml
from engine.records import StepRecord
from engine.records.memory_reading import MemoryReading
from engine.records.metrics import MetricsCollector
from engine.records.output_files import OutputFileError
from engine.records.step_lines import RecordingWriter
from engine.records.text import decode, visible

from ..render.colors import color_mode
from ..render.formatting import duration
from ..render.metrics_view import KV_POOL, RATE_WINDOW, RECORDS_CONTEXT, WEIGHTS, processed_rate
from ..render.speculation_text import speculation_note
from ..run.added_requests import AddedRequest, add_typed_request
from ..run.breakpoints import Breakpoint, Breakpoints
from ..run.controller import EngineController, EngineStatus, SteppableEngine
from ..run.frozen_heap import frozen_heap
from ..run.history import History, PastSteps
from ..run.knobs import KnobTurned, knobs, shown, turn
from ..run.outputs import TraceSpool, write_outputs
from ..run.request_text import RequestText, given_prompts, request_text
from ..widgets.add_request_screen import AddRequestScreen
from ..widgets.breakpoint_screen import BreakpointScreen
from ..widgets.budget import BudgetBar
from ..widgets.error_panel import ErrorPanel
from ..widgets.event_line import EventLine
from ..widgets.fork_screen import ForkScreen
from ..widgets.header import HeaderInfo, StepHeader
from ..widgets.help_screen import HelpScreen
from ..widgets.knob_screen import KnobScreen
from ..widgets.kv_grid import KVGrid
from ..widgets.mask import MaskCanvas
from ..widgets.mask_legend import MaskLegend
from ..widgets.memory_panel import MemoryPanel
from ..widgets.metrics_screen import MetricsScreen
from ..widgets.request_detail_screen import RequestDetailScreen
from ..widgets.requests_table import RequestSelected, RequestsTable
from ..widgets.timeline_screen import TimelineScreen
from ..widgets.type_ahead import TypeAheadScreen
from .engine_answers import EngineAnswer, ask_engine
from .engine_fed import SPEEDS, EngineFedApp, speed_label
from .profiled_steps import ProfiledSteps

if TYPE_CHECKING:  # the fork's plan reaches the scenario loader, and so torch: a viewer (classroom.watch)
    from scenarios.loader import Scenario  # imports this module and must not load them

    from ..run.fork import ForkPlan

EXIT_GRACE_S = 1.0  # after a hangup, the longest the process may take to end
MEMORY_POLL_S = 0.5
MIN_WIDTH, MIN_HEIGHT = 60, 20  # below this the panels cannot say anything useful
COMPACT_HEIGHT = 36  # below this the layout trades panel height for the requests table


def run_label(policy: str, variant: str | None, plugins) -> str:
    """What runs, for the header: two runs of one scenario (static vs --variant continuous) differ here."""
    parts = [f"policy {policy}"] + ([f"variant {variant}"] if variant else []) + [f"+{p}" for p in plugins]
    return " · ".join(parts)


def budget_title(record: StepRecord, width: int) -> str:
    """The budget panel's title: the step's token budget and how long the step took (engine wall time),
    the longest wording that fits the panel's border."""
    took = duration(record.wall_time_s)
    per_step = f"{record.budget} tokens per step"
    forms = (f"Token budget: {per_step} · this step {took}", f"Token budget: {per_step} · {took}",
             f"Budget: {per_step} · {took}", f"Token budget: {per_step}")
    return next((form for form in forms if len(form) <= width), forms[-1])


def graph_note(record) -> tuple[str, ...]:
    """The padded bucket a decode-graph step ran in: how much of it was padding."""
    if not record.decode_graph:
        return ()
    rows, keys = record.decode_graph
    return (f"decode graph: {len(record.items)} of {rows} rows, {keys} keys each",)


class DashboardApp(EngineFedApp):
    CSS_PATH = Path(__file__).with_name("dashboard.tcss")
    TITLE = "cbtui"

    BINDINGS = [
        Binding("space", "toggle_pause", "Pause", key_display="space"),
        Binding("n", "step_once", "Step"),
        # Pairs share one footer entry, and the keys the footer has no room for are in the help (?) and
        # the command palette, so the footer fits in 80 columns.
        Binding("left", "history_back", "Steps", key_display="←/→"),
        Binding("right", "history_forward", "Fwd", key_display="→", show=False),
        Binding("plus,equals_sign", "faster", "Speed", key_display="+/-"),
        Binding("minus", "slower", "Slower", key_display="-", show=False),
        Binding("a", "add_request", "Add"),
        Binding("k", "knobs", "Knobs"),
        Binding("d,enter", "detail", "Text", key_display="d"),
        Binding("f", "fork", "Fork"),
        Binding("z", "zoom", "Zoom", show=False),
        Binding("r", "restart", "Restart", show=False),
        Binding("m", "metrics", "Metrics", show=False),
        Binding("b", "breakpoints", "Breakpoints", show=False),
        Binding("x", "abort", "Abort", show=False),
        Binding("t", "timeline", "Timeline", show=False),  # in the help
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    STATEFUL_ACTIONS = ("toggle_pause", "step_once", "history_back", "history_forward", "faster", "slower", "zoom")

    selected: reactive[int | None] = reactive(None, init=False)
    zoomed: reactive[bool] = reactive(False, init=False)

    def __init__(self, scenario, engine: SteppableEngine, rebuild=None, paused: bool = False,
                 speed: float | None = None, max_steps: int | None = None,
                 probe: MemoryProbe | None = None, history_limit: int = 1000,
                 memory_poll_s: float = MEMORY_POLL_S, memory_sources: list | None = None,
                 recorded: bool = False, pages: PastSteps | None = None,
                 recording: RecordingWriter | None = None, breakpoints: Iterable[Breakpoint] = (),
                 trace_spool: TraceSpool | None = None, variant: str | None = None,
                 fork_base: tuple[Scenario, dict] | None = None):
        """`recorded`: `engine` replays a recording (recording.py): memory comes from the records
        alone, since this process is not the one that ran them. `pages`: the file a replay reads,
        for history older than `history_limit` steps. `recording`: writes the run as it goes (and
        serves as `pages`). `trace_spool` (--trace-out) keeps every record of the run for the trace
        written at the end. `fork_base`: the scenario the engine was built from and the command line's
        engine settings, for `f` (None: this run cannot be forked here)."""
        super().__init__(paused, speed)
        self.fork_base = fork_base
        self._variant = variant
        self._trace_spool = trace_spool
        # Metrics and the memory profile follow every record, whatever step is on screen.
        self._recorded = recorded
        self._memory_sources = [] if recorded else memory_sources
        header = engine.header()
        self._device = header.device
        self._nvml = Nvml()  # the panel's probe and the profile's source share it: NVML opens once, on first use
        self._reset_metrics()
        self._started = False  # the engine thread has said "started" once (later ones are restarts)
        self._memory_poll_s = memory_poll_s
        self.scenario = scenario
        self._engine_label = ("recorded · " if recorded else "") + header.label()
        self._run_label = run_label(header.policy, variant or header.variant, header.plugins)
        self._random_weights = header.random_weights
        self._probe = probe
        self._recording = recording
        self._recording_error_shown = False
        self.history = History(history_limit, pages if recording is None else recording.lines)
        self.break_hit: tuple[int, str] | None = None  # (step, why) of the breakpoint that paused the run
        self.memory_reading: MemoryReading | None = None  # the newest live reading of the memory panel
        self._newest_step: int | None = None
        self.added: list[AddedRequest] = []  # requests typed in with `a`, this run (a fork queues them again)
        # Keys dispatched while the dashboard was on top, until they bubble back here (bounded: a key a
        # widget takes never comes back)
        self._typed_to_dashboard: deque[events.Key] = deque(maxlen=64)
        self.turned: list[KnobTurned] = []  # knobs turned with `k`, this run (what a fork starts from)
        self.aborted: list[tuple[int, int]] = []  # (step, request id) aborted with `x`, this run
        if not recorded:  # a live engine: its steps run in a memory context (memory by context, key m)
            engine = ProfiledSteps(engine, lambda: self.memory_profile)
            if rebuild is not None:
                rebuild = self._profiled(rebuild)
        self.controller = EngineController(engine, self._post_record, self._post_status, rebuild=rebuild,
                                           paused=paused, speed=self.speed, max_steps=max_steps,
                                           breakpoints=Breakpoints(breakpoints))

    def _profiled(self, rebuild):
        def profiled_rebuild():
            return ProfiledSteps(rebuild(), lambda: self.memory_profile)
        return profiled_rebuild

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StepHeader(id="header")
        yield ErrorPanel(id="error")
        yield EventLine(id="events")
        with Vertical(id="body"):
            with Horizontal(id="top"):
                with Vertical(id="mask-panel", classes="panel") as mask_panel:
                    mask_panel.border_title = "Ragged mask"
                    yield MaskCanvas(id="mask")
                    yield MaskLegend(id="mask-legend")
                with Vertical(id="side"):
                    with Vertical(id="budget-panel", classes="panel") as panel:
                        panel.border_title = "Token budget"
                        yield BudgetBar(id="budget")
                    with Vertical(id="kv-panel", classes="panel") as panel:
                        panel.border_title = "KV cache"
                        yield KVGrid(id="kv")
                    with Vertical(id="memory-box", classes="panel") as panel:
                        panel.border_title = "Memory"
                        yield MemoryPanel(id="memory")
            with Vertical(id="requests-panel", classes="panel") as panel:
                panel.border_title = "Requests"
                yield RequestsTable(id="requests")
        yield Static(f"The terminal is too small: the dashboard needs at least {MIN_WIDTH}x{MIN_HEIGHT}. "
                     "Enlarge the window (q quits).", id="too-small")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        if self._probe is None:
            self._probe = RecordedProbe() if self._recorded else open_probe(nvml=self._nvml)
        self._poll_memory()
        self.set_interval(self._memory_poll_s, self._poll_memory)
        self._fit_layout()
        self.query_one(RequestsTable).focus()
        self.controller.start()
        self._draw()

    def on_resize(self, event: events.Resize) -> None:
        # This handler runs before App's own, which is the one that updates self.size: read the event.
        self._fit_layout(event.size)

    def _fit_layout(self, size: Size | None = None) -> None:
        width, height = size or self.size
        dashboard = self.screen_stack[0]  # not a help or metrics screen shown over it
        dashboard.set_class(width < MIN_WIDTH or height < MIN_HEIGHT, "-too-small")
        dashboard.set_class(height < COMPACT_HEIGHT, "-compact")
        dashboard.set_class(width < 100, "-narrow")

    # -- from the engine thread --------------------------------------------------------------
    def _post_record(self, record: StepRecord) -> None:
        if self._recording is not None:
            self._recording.write(record)  # before the UI sees it: history may read it back
        self._to_inbox(record)

    def _post_status(self, status: EngineStatus) -> None:
        if self._recording is not None and status.kind == "started":
            self._recording.start()  # a restart writes the file anew
        self._to_inbox(status)

    def _take_step(self, record: StepRecord) -> None:
        self._newest_step = record.step
        if self._recorded:
            self.history.append(record)
            self._observe(record)
            return
        with self.memory_profile.context(RECORDS_CONTEXT):  # what the dashboard's own keeping costs
            self.history.append(record)
            self._observe(record)

    def _take_status(self, status: EngineStatus) -> None:
        if status.kind == "breakpoint":  # the engine thread paused itself on the newest step
            self.break_hit = None if self._newest_step is None else (self._newest_step, status.message)
            self.history.go_live()
            self.paused = True
        elif status.kind == "started":
            self.history.clear()
            self.break_hit = None
            self.added, self.turned, self.aborted = [], [], []  # a restart runs the scenario as written
            if self._started:  # a restart; the first run's metrics are fresh from __init__, and its
                self._reset_metrics()  # first step may already be in the profiler's step context
            self._started = True
            if self._trace_spool is not None:
                self._trace_spool.restart()
        super()._take_status(status)

    def _after_drain(self) -> None:
        if self._recording is not None and self._recording.error and not self._recording_error_shown:
            self._recording_error_shown = True
            self.notify(visible(self._recording.error), severity="error", timeout=30, markup=False)

    # -- drawing -----------------------------------------------------------------------------
    def _draw_panels(self) -> None:
        record = self.history.current()
        self.query_one(StepHeader).show(self._header_info(record))
        self.query_one(ErrorPanel).show_error(self.error)
        self._draw_events()
        self.query_one(BudgetBar).show(record)
        self._title_budget(record)
        self._draw_mask(record)
        self.query_one(KVGrid).show(record.kv if record else None, self.selected, record.shards if record else None,
                                    record.comm if record else None)
        past_step = record.step if record is not None and not self.history.live else None
        self.query_one(MemoryPanel).show_step(record.memory if record else None, past_step,
                                              record.shards if record else None)
        if record is not None:
            self.query_one(RequestsTable).show(record.requests)

    def _draw_events(self) -> None:
        recent = self.history.recent(2)
        record = recent[-1] if recent else None
        previous = recent[0] if len(recent) == 2 else None
        hit = self.break_hit
        paused_by = hit[1] if hit is not None and record is not None and record.step == hit[0] else None
        self.query_one(EventLine).show(record, previous, paused_by)

    def _draw_mask(self, record: StepRecord | None) -> None:
        items = list(record.items) if record else []
        zoom_on = None
        if self.zoomed and self.selected is not None:
            items = [i for i in items if i.request_id == self.selected]
            zoom_on = self.selected
        canvas = self.query_one(MaskCanvas)
        canvas.show(items, self.selected, record.attention_window if record else None)
        # The legend reads the raster's scale, which depends on the canvas size: before the first
        # layout there is none, and the legend is drawn again when the canvas is sized (below).
        hits = record.kv.prefix.hits if record is not None and record.kv.prefix is not None else None
        self.query_one(MaskLegend).show(items, zoom_on, canvas.current_raster(), self.selected, color_mode(self),
                                        hits)

    def _title_budget(self, record: StepRecord | None) -> None:
        panel = self.query_one("#budget-panel")
        # The border's room: the panel's width less its corners and a cell either side of the title.
        budget = budget_title(record, panel.outer_size.width - 4) if record else "Token budget"
        if panel.border_title != budget:
            panel.border_title = budget

    @on(MaskCanvas.Rescaled)
    def _redraw_mask_legend(self) -> None:
        """The layout changed (the first one included): the legend's scale and the budget title's room."""
        with contextlib.suppress(NoMatches):  # the canvas resized while the app is closing: the legend is gone
            self._draw_mask(self.history.current())
            self._title_budget(self.history.current())

    def _header_info(self, record: StepRecord | None) -> HeaderInfo:
        newest = None if self.history.live else self.history.newest_step()
        rate = processed_rate(self.history.recent(RATE_WINDOW))  # the metrics screen says the same figure
        common = dict(scenario=self.scenario.title, engine=self._engine_label, run_state=self.run_state(),
                      speed=speed_label(self.speed), tokens_per_second=rate, newest=newest, run=self._run_label,
                      random_weights=self._random_weights)
        if record is None:
            return HeaderInfo(step=None, **common)
        return HeaderInfo(step=record.step, running=record.running, waiting=record.waiting,
                          finished=record.finished_total, pending=record.pending,
                          preempted=record.preemptions_total,
                          notes=(*record.annotations, *graph_note(record), *speculation_note(record, self.selected)),
                          errors=tuple(record.errors),
                          **common)

    def _poll_memory(self) -> None:
        assert self._probe is not None  # on_mount opens it before the first poll
        self.memory_reading = self._probe.read()  # (cbtui serve's presenter hands it to the class)
        self.query_one(MemoryPanel).show_reading(self.memory_reading)

    # -- reactivity ----------------------------------------------------------------------------
    def watch_selected(self) -> None:
        self._after_change()

    def watch_zoomed(self) -> None:
        self._after_change()

    @on(RequestSelected)
    def _select_request(self, event: RequestSelected) -> None:
        self.selected = event.request_id
        if event.request_id is None:
            self.zoomed = False

    # -- actions --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """None greys a key out in the footer: it exists, but does nothing right now."""
        stopped = not self._can_step()
        enabled = {
            "toggle_pause": not stopped or self._showing_past(),
            "step_once": self.paused and not stopped,
            "history_back": self.history.can_go_back(),  # while running it pauses first
            "history_forward": (self.paused or stopped) and (not self.history.live or not stopped),
            "faster": self.speed < SPEEDS[-1],
            "slower": self.speed > SPEEDS[0],
            "zoom": self.zoomed or self._selected_in_step(),
        }.get(action, True)
        return True if enabled else None

    def _selected_in_step(self) -> bool:
        record = self.history.current()
        return record is not None and any(i.request_id == self.selected for i in record.items)

    def _showing_past(self) -> bool:
        return not self.history.live

    def _go_live(self) -> None:
        self.history.go_live()

    def action_history_back(self) -> None:
        if self._can_step():
            self._pause_first()  # going back while the engine runs would show a step it has already left
        self.history.back()
        self._draw()
        self._refresh_bindings_if_changed()

    def action_history_forward(self) -> None:
        if not self.history.forward() and self._can_step():
            self.controller.step_once()  # at the newest step: → runs the next one
        self._draw()
        self._refresh_bindings_if_changed()

    def action_zoom(self) -> None:
        self.zoomed = not self.zoomed

    def action_restart(self) -> None:
        self.history.clear()
        self.engine_state = "starting"
        self.error = None
        self._restart_at_start_speed()
        self._draw()

    def _reset_metrics(self) -> None:
        self.metrics = MetricsCollector()
        self.memory_profile = DetailedMemoryProfiler(sources=self._memory_sources, device=self._device,
                                                     nvml=self._nvml)

    def _observe(self, record: StepRecord) -> None:
        try:
            self.metrics.observe(record)
            (self.memory_profile.observe_recorded if self._recorded else self.memory_profile.observe)(record)
            self.memory_profile.hold(WEIGHTS, record.memory.weight_bytes)
            self.memory_profile.hold(KV_POOL, record.memory.kv_pool_bytes)
        except ValueError as exc:  # a record the collector refuses must not take the UI down
            self.error = f"metrics: {exc}"
        if self._trace_spool is not None:
            try:
                self._trace_spool.observe(record)
            except OSError as exc:  # a full disk: say so, keep running; the trace write at the end fails too
                self.error = f"--trace-out: {exc.strerror or exc}"

    def _metrics_now(self):
        recent = self.history.recent(1)
        latest = recent[-1] if recent else None
        notes = list(latest.annotations) + list(latest.errors) if latest else []
        return self.metrics, self.memory_profile, notes

    def action_abort(self) -> None:
        """Stops the selected request before the next step: its KV blocks are freed, its tokens kept."""
        if self.selected is None:
            self.notify("select a request first (click its row), then x aborts it", timeout=4)
            return
        if self._refuse_replay("aborting a request"):
            return
        request_id = self.selected

        def abort(engine) -> int:
            engine.abort(request_id)
            return engine.step_index  # the step whose record says so

        def aborted(step: int) -> None:
            self.aborted.append((step, request_id))  # a fork aborts it there too
            self._say(f"request {request_id} is aborted before the next step")

        ask_engine(self, self.controller, abort, aborted, self._say)

    # -- changing the run (issue #32) -------------------------------------------------------------
    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key) and not event.is_forwarded and not isinstance(self.screen, TypeAheadScreen):
            self._typed_to_dashboard.append(event)  # dispatched to the dashboard's widgets
        await super().on_event(event)

    async def _on_key(self, event: events.Key) -> None:
        """A key typed right after a / k / f, dispatched before their box opened, is the box's: not
        the dashboard's bindings (r restarts, q quits), nor the box's before its field has it.
        (Textual calls App's own handler after this one unless the default is prevented.)"""
        typed_before = event in self._typed_to_dashboard
        if typed_before:
            self._typed_to_dashboard.remove(event)
        if typed_before and isinstance(self.screen, TypeAheadScreen) and self.screen.type_ahead(event):
            event.prevent_default()
            event.stop()

    @on(EngineAnswer)
    def _engine_answered(self, answer: EngineAnswer) -> None:
        answer.deliver()

    def action_detail(self) -> None:
        """The selected request's whole text so far, kept up to date."""
        if self.selected is None:
            self._say("select a request first (↑/↓), then d shows its whole text")
            return
        if not isinstance(self.screen, RequestDetailScreen):
            self.push_screen(RequestDetailScreen(self.selected, self._fetch_detail))

    def _fetch_detail(self, request_id: int) -> None:
        screen = next((s for s in self.screen_stack if isinstance(s, RequestDetailScreen)), None)
        if screen is None:
            return
        recent = self.history.recent(1)
        newest = recent[-1] if recent else None
        view = None if newest is None else next((v for v in newest.requests if v.id == request_id), None)
        blocks = None if newest is None or not newest.kv.num_blocks else newest.kv.block_tables.get(str(request_id), ())

        def show(detail: RequestText) -> None:
            screen.show(detail, view.state if view is not None else detail.state, blocks)

        if self._recorded:  # no engine: what the newest record says, its output's tail only
            if view is None:
                screen.say(f"request {request_id} is not in the recorded step")
                return
            tail = view.output_text if view.output_text is not None else decode(view.output_tail)
            show(RequestText(view.id, newest.step if newest else None, view.state, None, tail, view.prompt_len,
                             None, view.generated, view.max_new_tokens, whole=False))
            return
        given = self.added_specs().get(request_id)
        ask_engine(self, self.controller, lambda engine: request_text(engine, request_id, given), show, screen.say)

    def added_specs(self) -> dict[int, dict]:
        """Every request the run was given, by id: the scenario's workload, then those typed with `a`."""
        given = given_prompts(getattr(self.scenario, "requests", ()))
        given.update({a.request_id: a.spec() for a in self.added})
        return given

    def action_fork(self) -> None:
        """B's changes asked for, then the compare view of the run as it went and its fork at this step."""
        if self._refuse_replay("a fork") or isinstance(self.screen, ForkScreen):
            return
        if self.fork_base is None:
            self._say("this run cannot be forked here: f forks a run that cbtui scenario started (without --plugin)")
            return
        record = self.history.current()
        if record is None or (self.paused is False and self._can_step()):
            self._say("pause on the step to fork at (space, ←/→), then f")
            return
        step = record.step
        later = {t.name: shown(t.new) for t in self.turned if t.step > step}  # the newest turn of each
        before = [t for t in self.turned if t.step <= step]
        besides = [f"{len(self.added)} request(s) added"] if self.added else []
        besides += [f"{len(before)} knob turn(s)"] if before else []
        aborts = [rid for at, rid in self.aborted if at <= step]
        besides += [f"{len(aborts)} abort(s)"] if aborts else []
        self.push_screen(ForkScreen(step, " ".join(f"{k}={v}" for k, v in later.items()),
                                    f" (with the {', '.join(besides)})" if besides else ""),
                         lambda typed: self._fork(step, typed))

    def fork_plan(self, step: int, typed: str) -> ForkPlan:
        """The plan for B's changes typed as KEY=VALUE pairs; ValueError (one line) for none, or a bad one."""
        from ..run.fork import ForkPlan  # here, not at the top: see TYPE_CHECKING above

        assert self.fork_base is not None  # action_fork asks only then
        scenario, overrides = self.fork_base
        changes = dict(parse_setting(part) for part in typed.split())
        if not changes:
            raise ValueError("no change typed: give KEY=VALUE, e.g. max_tokens_per_step=96")
        changed_config(scenario.engine_config(self._variant, **overrides), changes)  # its range, before it runs
        return ForkPlan(scenario, self._variant, dict(overrides), step,
                        tuple((t.step, t.name, t.new) for t in self.turned if t.step <= step),
                        tuple(a.spec() for a in self.added), tuple(changes.items()),
                        tuple((at, rid) for at, rid in self.aborted if at <= step))

    def _fork(self, step: int, typed: str | None) -> None:
        from scenarios.errors import ScenarioError  # here: see TYPE_CHECKING above

        if typed is None:
            return
        try:
            plan = self.fork_plan(step, typed)
        except (ValueError, ScenarioError) as exc:
            self._say(f"no fork: {visible(str(exc))}", error=True)
            return
        self.open_fork(plan)

    def open_fork(self, plan: ForkPlan) -> None:
        """The compare view in its own process, on this terminal; q there comes back here."""
        from ..run.fork import error_file, save_plan

        path = save_plan(plan)
        errors = error_file(path)
        try:
            with self.suspend():
                code = subprocess.run([sys.executable, "-m", "cbtui.apps.fork_view", str(path)], check=False).returncode
        except SuspendNotSupported:
            self._say(f"this terminal cannot be handed over; run {plan.command_line()} (the requests added, "
                      f"knobs turned and requests aborted here are not in it)", error=True)
            return
        finally:
            path.unlink(missing_ok=True)
        if errors.exists():
            self._say(f"no fork: {errors.read_text()[:300]}", error=True)
            errors.unlink(missing_ok=True)
        elif code:
            self._say(f"the compare view ended with exit code {code}", error=True)

    def _refuse_replay(self, what: str) -> bool:
        """A recording cannot be changed: said in one line (True), and nothing else happens."""
        if self._recorded:
            self.notify(f"a recorded run cannot be changed: {what} needs a live engine (cbtui scenario)",
                        timeout=5, markup=False)
        return self._recorded

    def _say(self, line: str, error: bool = False) -> None:
        self.notify(line, severity="error" if error else "information", timeout=6 if error else 4, markup=False)

    def action_add_request(self) -> None:
        """A typed prompt joins the run at the next step; its id is selected."""
        if self._refuse_replay("adding a request") or isinstance(self.screen, AddRequestScreen):
            return
        chat = ("the random preset takes the text as bytes (a real model, --model smollm2, wraps it in its chat "
                "template)" if self._random_weights else "the model's chat template wraps the text, where it has one")
        self.push_screen(AddRequestScreen(chat), self._add_typed)

    def _add_typed(self, typed: tuple[str, int] | None) -> None:
        if typed is None:
            return
        text, max_tokens = typed
        ask_engine(self, self.controller, lambda engine: add_typed_request(engine, text, max_tokens),
                   self._added_request, lambda line: self._say(f"request not added: {line}", error=True))

    def _added_request(self, added: AddedRequest) -> None:
        self.added.append(added)
        self.selected = added.request_id
        self.query_one(RequestsTable).follow(added.request_id)
        how = "chat template, " if added.chat else ""
        self._say(f"request {added.request_id} added ({how}{len(added.prompt)} prompt tokens, "
                  f"{added.max_new_tokens} max): it joins at step {added.arrival_step}")

    def action_knobs(self) -> None:
        """Every setting; the live ones turned between two steps (Engine.reconfigure)."""
        if self._refuse_replay("turning a knob") or isinstance(self.screen, KnobScreen):
            return
        self.push_screen(KnobScreen(self._fetch_knobs, self._turn_knob))

    def _knob_screen(self) -> KnobScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, KnobScreen)), None)

    def _fetch_knobs(self) -> None:
        def show(rows) -> None:
            screen = self._knob_screen()
            if screen is not None:
                screen.show(rows)
        ask_engine(self, self.controller, knobs, show, lambda line: None)  # the thread stopped: rows stay

    def _turn_knob(self, text: str) -> None:
        screen = self._knob_screen()
        if screen is None:
            return
        try:
            name, value = parse_setting(text)
        except ValueError as exc:  # malformed, unknown, or fixed: why, in one line; nothing is sent
            screen.say(visible(str(exc)), error=True)
            return
        ask_engine(self, self.controller, lambda engine: turn(engine, name, value), self._knob_turned,
                   lambda line: self._knob_refused(f"not changed: {line}"))

    def _knob_turned(self, turned: KnobTurned) -> None:
        self.turned.append(turned)
        screen = self._knob_screen()
        if screen is not None:
            screen.say(f"{turned.line()} (the event line says it when it applies)")
            self._fetch_knobs()
        else:
            self._say(turned.line())

    def _knob_refused(self, line: str) -> None:
        screen = self._knob_screen()
        if screen is not None:
            screen.say(line, error=True)
        else:
            self._say(line, error=True)

    def action_metrics(self) -> None:
        if not isinstance(self.screen, MetricsScreen):
            self.push_screen(MetricsScreen(self._metrics_now))

    def action_timeline(self) -> None:
        if not isinstance(self.screen, TimelineScreen):
            self.push_screen(TimelineScreen(self.history, lambda: getattr(self.history.current(), "step", None)))

    def action_breakpoints(self) -> None:
        if not isinstance(self.screen, BreakpointScreen):
            self.push_screen(BreakpointScreen(self.controller.breakpoints))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            s = self.scenario
            self.push_screen(HelpScreen(s.title, s.description, s.question))

    def action_quit(self) -> None:  # type: ignore[override]  # App's is async; sync: LessonApp calls it
        self.controller.stop(timeout=1.0)
        self.exit()

    def on_unmount(self) -> None:
        self.controller.stop(timeout=1.0)
        if self._probe is not None:
            self._probe.close()
        self._nvml.close()

    # -- command palette ------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Pause / resume", "Pause the engine, or resume it (back to live)",
                            self.action_toggle_pause)
        yield SystemCommand("Step once", "Run exactly one scheduler step (pauses first)", self._palette_step)
        yield SystemCommand("Previous step", "Show the previous step from history (pauses first)",
                            self._palette_back)
        yield SystemCommand("Next step", "Show the next step from history, or run one", self._palette_forward)
        yield SystemCommand("Faster", "More steps per second", self.action_faster)
        yield SystemCommand("Slower", "Fewer steps per second", self.action_slower)
        yield SystemCommand("Zoom mask", "Zoom the mask into the selected request's rows", self.action_zoom)
        yield SystemCommand("Restart scenario", "Rebuild the engine and start the scenario again",
                            self.action_restart)
        yield SystemCommand("Scenario help", "What this scenario shows, and the keys", self.action_help)
        yield SystemCommand("Breakpoints", "List, add or clear breakpoints (pause on preemption, step N, ...)",
                            self.action_breakpoints)
        yield SystemCommand("Metrics", "TTFT and inter-token latency, throughput, memory profile",
                            self.action_metrics)
        yield SystemCommand("Timeline", "A row per request, a column per step: waiting, prefill, decode, "
                            "preempted, finished", self.action_timeline)
        yield SystemCommand("Request: add one", "Type a prompt that joins the run at the next step",
                            self.action_add_request)
        yield SystemCommand("Knobs: turn a setting", "Every setting; turn a live one from the next step",
                            self.action_knobs)
        yield SystemCommand("Request: whole text", "The selected request's whole text so far", self.action_detail)
        yield SystemCommand("Fork at this step", "The compare view: the run beside itself changed from the next step",
                            self.action_fork)

    def _pause_first(self) -> None:
        if not self.paused:
            self.paused = True
            self.controller.pause()

    def _palette_step(self) -> None:
        self._pause_first()
        self.action_step_once()

    def _palette_back(self) -> None:
        self.action_history_back()

    def _palette_forward(self) -> None:
        self._pause_first()
        self.action_history_forward()


def leave_a_core_for_the_ui(engine: SteppableEngine) -> None:
    """On the CPU, torch's worker threads would take every core (and spin between ops), and
    keys would wait for them; one core stays with the UI. On a GPU the engine mostly waits."""
    if engine.header().device == "cpu":
        import torch

        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))


def run_dashboard(scenario, engine: SteppableEngine, overrides: dict | None = None, paused: bool = False,
                  speed: float | None = None, max_steps: int | None = None, variant: str | None = None,
                  plugins: tuple[str, ...] = (), rebuild=None, recorded: bool = False,
                  pages: PastSteps | None = None, recording: RecordingWriter | None = None,
                  breakpoints: Iterable[Breakpoint] = (), app_factory=None,
                  app_class=DashboardApp,  # a subclass (cbtui serve's presenter)
                  metrics_out: str | None = None, trace_out: str | None = None) -> int:
    """Opens the dashboard on `engine`; `r` rebuilds it from the scenario with the same variant,
    plugins and overrides (or calls `rebuild`: a replay starts over). Returns the exit code: 0 after
    a quit, 128 + N after signal N, 2 when --metrics-out / --trace-out could not be written (after
    the quit, with a line on stderr saying why)."""
    overrides = dict(overrides or {})
    leave_a_core_for_the_ui(engine)
    if rebuild is None:
        def rebuild():
            return scenario.build_engine(variant, plugins=plugins, **overrides)
    try:
        spool = TraceSpool(trace_out) if trace_out is not None else None
    except OutputFileError as exc:
        print(f"cbtui: error: {visible(str(exc))}", file=sys.stderr)
        return 2
    if app_factory is not None:  # a dashboard of another kind (a lesson): app_factory(scenario, engine, rebuild)
        app = app_factory(scenario, engine, rebuild)
    else:
        app = app_class(scenario, engine, rebuild=rebuild, paused=paused, speed=speed, max_steps=max_steps,
                        recorded=recorded, pages=pages, recording=recording, breakpoints=breakpoints,
                        trace_spool=spool, variant=variant,
                        # f forks what the engine was built from; a run with --plugin or a replay cannot be
                        fork_base=None if recorded or plugins or app_class is not DashboardApp else (
                            scenario, overrides))

    def close_recording() -> None:
        if recording is not None and not app.controller.thread.is_alive():
            recording.close()  # (a step still in flight after the wait may write one more line: the OS closes it)

    signalled = run_until_quit(app, after=close_recording)
    written = _write_outputs(app, metrics_out, spool)
    if signalled:
        return 128 + signalled
    return app.return_code or written  # 1 when the app ended on an unhandled error (Textual printed it)


def run_until_quit(app, after=None) -> int | None:
    """Runs a Textual app that owns an engine thread (`app.controller`) until it quits; returns the
    signal that ended it, if one did. `after` runs once the engine thread is stopped."""
    signalled: list[int] = []

    def hang_up(signum, frame) -> None:
        # The terminal went away (SSH dropped) or we were told to stop: quit as on q. Restoring
        # a terminal that no longer exists can block, so the process ends regardless soon after.
        signalled.append(signum)
        app.controller.stop(timeout=0.5)
        watchdog = threading.Timer(EXIT_GRACE_S, os._exit, args=(128 + signum,))
        watchdog.daemon = True
        watchdog.start()
        app.exit()

    # Each ends the app as q does, so the terminal is restored; the exit code says which (130: SIGINT).
    # SIGQUIT and SIGUSR1 would otherwise kill the process with the terminal still in app mode.
    stops = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)
    previous = {sig: signal.signal(sig, hang_up) for sig in stops}
    try:
        with frozen_heap():  # no full collector pass over torch's and textual's objects while keys wait
            app.run()
    finally:
        app.controller.stop(timeout=1.0)
        if after is not None:
            after()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return signalled[0] if signalled else None


def _write_outputs(app: DashboardApp, metrics_out: str | None, spool: TraceSpool | None) -> int:
    """--metrics-out / --trace-out once the terminal is restored: 0, or 2 after saying why not."""
    try:
        for line in write_outputs(app.metrics, metrics_out, spool):
            print(visible(line), file=sys.stderr)
    except OutputFileError as exc:
        print(f"cbtui: error: {visible(str(exc))}", file=sys.stderr)
        return 2
    finally:
        if spool is not None:
            spool.close()
    return 0
