"""The timeline screen (key t): a row per request, a column per step, a glyph for what the request
did then (render/timeline.py). It follows the run live: new steps appear on the right and the view
stays on the newest while it is scrolled to the end; ←/→ (or the mouse) scroll back through the
steps, ↑/↓ through the requests. The step on screen in the dashboard is marked ▼ in the step ruler.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Size
from textual.screen import Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from ..render.colors import NONE, color_mode
from ..render.timeline import BY_GLYPH, Timeline, legend
from ..run.history import History

REFRESH_S = 0.2
LABEL = 6  # "  A=10 ": the request's id column, always in view
RULER = 1  # the step ruler's row, always in view
TICK = 10  # a step number every TICK steps


def ruler(steps: list[int], marked: int | None) -> str:
    """The step ruler over `steps`: the number of each multiple of TICK where it fits, ▼ on `marked`."""
    cells = [" "] * len(steps)
    for i, step in enumerate(steps):
        label = str(step)
        if step % TICK == 0 and i + len(label) <= len(steps) and all(c == " " for c in cells[i:i + len(label)]):
            cells[i:i + len(label)] = list(label)
    if marked is not None and marked in steps:
        cells[steps.index(marked)] = "▼"
    return "".join(cells)


def request_label(request_id: int) -> str:
    return f"{request_id:>{LABEL - 1}} "


class TimelineView(ScrollView, can_focus=True):
    """The grid, drawn line by line; the ruler (top row) and the ids (left columns) stay in view."""

    BINDINGS = [
        Binding("left", "scroll_left", "Earlier", show=False),
        Binding("right", "scroll_right", "Later", show=False),
        Binding("up", "scroll_up", "Up", show=False),
        Binding("down", "scroll_down", "Down", show=False),
        Binding("home", "scroll_home", "First step", show=False),
        Binding("end", "scroll_end", "Newest step", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
    ]

    def __init__(self, timeline: Timeline, **kwargs):
        super().__init__(**kwargs)
        self.timeline = timeline
        self.marked: int | None = None  # the step the dashboard shows
        self._rows: list[int] = []
        self._styles: dict[str, Style] = {}
        self.following = True  # the newest step kept in view; scrolling back stops it, End resumes it

    def grid_width(self) -> int:
        return max(1, self.scrollable_content_region.width - LABEL)

    def grid_height(self) -> int:
        return max(1, self.scrollable_content_region.height - RULER)

    def update_grid(self) -> None:
        """After new steps: sizes, and the newest step kept in view while the view is at the end."""
        self._rows = self.timeline.requests()
        mode = color_mode(self.app)
        self._styles = {glyph: Style() if mode == NONE else Style.parse(kind.style) for glyph, kind in BY_GLYPH.items()}
        # Virtual size: the grid plus the sticky ruler and labels (their room is never scrolled over).
        self.virtual_size = Size(len(self.timeline) + LABEL, len(self._rows) + RULER)
        if self.following:  # once the new size is laid out
            self.call_after_refresh(lambda: self.scroll_to(x=self.max_scroll_x, animate=False, immediate=True))
        self.refresh()

    def action_scroll_left(self) -> None:
        self.following = False
        super().action_scroll_left()

    def action_scroll_home(self) -> None:
        self.following = False
        self.scroll_to(x=0, y=0, animate=False)

    def action_scroll_right(self) -> None:
        super().action_scroll_right()
        self.following = self.scroll_target_x >= self.max_scroll_x

    def action_scroll_end(self) -> None:
        self.following = True
        self.scroll_to(x=self.max_scroll_x, animate=False)

    def visible_steps(self) -> tuple[int, int]:
        """(first column index, how many) of the steps in view."""
        first = min(int(self.scroll_x), max(0, len(self.timeline) - 1))
        return first, min(self.grid_width(), len(self.timeline) - first)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        first, count = self.visible_steps()
        if y < RULER:
            steps = self.timeline.steps[first:first + count]
            line = [Segment(" step ".rjust(LABEL), Style(dim=True)), Segment(ruler(steps, self.marked), Style())]
            return Strip(line).adjust_cell_length(width, Style())
        index = int(self.scroll_y) + y - RULER
        if index >= len(self._rows):
            return Strip.blank(width, Style())
        rid = self._rows[index]
        segments = [Segment(request_label(rid), Style(bold=True))]
        glyphs = self.timeline.row(rid, first, count)
        run_start = 0
        for i in range(1, len(glyphs) + 1):  # a segment per run of one glyph
            if i == len(glyphs) or glyphs[i] != glyphs[run_start]:
                glyph = glyphs[run_start]
                segments.append(Segment(glyphs[run_start:i], self._styles.get(glyph, Style())))
                run_start = i
        return Strip(segments).adjust_cell_length(width, Style())

    def on_resize(self) -> None:
        self.update_grid()


def legend_text(mode: str) -> Text:
    parts: list[Text] = []
    for glyph, meaning, style in legend():
        # no-break spaces inside an entry: a narrow screen wraps the legend between entries only
        parts.append(Text.assemble((glyph, "" if mode == NONE else style), f"\u00a0{meaning}".replace(" ", "\u00a0")))
    return Text("  ").join(parts)


class TimelineScreen(Screen[None]):
    """Over the dashboard, not modal: the dashboard's keys (space, n, +/-) still drive the run beneath."""

    BINDINGS = [Binding("escape,t,q", "dismiss", "Close")]

    DEFAULT_CSS = """
    TimelineScreen { align: center middle; }
    TimelineScreen > #timeline-box { width: 100%; height: 100%; background: $surface; }
    TimelineScreen #timeline-title { height: 1; background: $boost; text-style: bold; }
    TimelineScreen #timeline-legend { height: auto; }
    TimelineScreen TimelineView { height: 1fr; scrollbar-size: 1 1; }
    """

    def __init__(self, history: History, shown_step=lambda: None):
        """`history`: the dashboard's records; `shown_step()`: the step the dashboard has on screen."""
        super().__init__()
        self._history = history
        self._shown_step = shown_step
        self.timeline = Timeline()

    def compose(self) -> ComposeResult:
        with Vertical(id="timeline-box"):
            yield Static("Timeline: a row per request, a column per step, ▼ the step shown (t/esc: close)",
                         id="timeline-title")
            yield Static(legend_text(color_mode(self.app)), id="timeline-legend")
            yield TimelineView(self.timeline, id="timeline")

    def on_mount(self) -> None:
        self.follow()
        view = self.query_one(TimelineView)
        view.focus()
        self.set_interval(REFRESH_S, self.follow)

    def follow(self) -> None:
        """Takes the steps the dashboard received since the last call (a restart starts over)."""
        newest = self._history.newest_step()
        if newest is None or (self.timeline.newest_step is not None and newest < self.timeline.newest_step):
            self.timeline.clear()
        view = self.query_one(TimelineView)
        marked = self._shown_step()
        if newest == self.timeline.newest_step and marked == view.marked:
            return
        for record in self._history.kept_after(self.timeline.newest_step):
            self.timeline.add(record)
        view.marked = marked
        view.update_grid()
