"""Every request of the scenario in one table; the highlighted row is the selected request."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from engine.records import RequestView
from engine.records.text import decode, visible

from ..colors import request_color
from ..speculation_text import drafts_cell

TEXT_TAIL = 16
# (key, label, width): fixed widths, so updating a cell never re-measures the whole table.
# hit: prompt tokens the latest admission took from the prefix cache (prefix caching).
COLUMNS = (("id", "id", 5), ("state", "state", 9), ("prompt", "prompt", 9), ("hit", "hit", 4), ("gen", "gen", 7),
           ("ttft", "TTFT", 4), ("pre", "pre", 3), ("why", "why not scheduled", 18), ("text", "output tail", TEXT_TAIL))
PRIORITY_COLUMN = ("pri", "pri", 3)  # shown once any request has a priority
STATE_STYLE = {"decode": "green", "prefill": "yellow", "recompute": "bold yellow", "waiting": "magenta",
               "preempted": "bold red", "finished": "dim", "pending": "dim"}


def state_name(view: RequestView) -> str:
    """A preempted request feeding its sequence again is recomputing, not prefilling for the first time."""
    return "recompute" if view.state == "prefill" and view.num_preemptions else view.state


def output_tail(view: RequestView) -> str:
    """The tail as text: the checkpoint tokenizer's (output_text, with its newlines, escapes and any
    other control character written out: `visible`), or the byte ids decoded (non-text bytes as dots)."""
    if view.output_text is None:
        return decode(view.output_tail)[-TEXT_TAIL:]
    shown, width = [], 0
    for char in reversed(view.output_text.replace("\ufffd", "\u00b7")):  # U+FFFD: half a character
        unit = visible(char)
        if width + len(unit) > TEXT_TAIL:  # whole escapes only: never a cut "x1b"
            break
        shown.append(unit)
        width += len(unit)
    return "".join(reversed(shown))


def row_cells(view: RequestView, no_color: bool, priority: bool = False) -> tuple[Text, ...]:
    """A recording's state and reason are any strings: their control characters are shown (the
    output tail's too: `output_tail`)."""
    mark = "" if no_color else "■ "  # without colour the id itself is the mark
    state = state_name(view)
    first = (Text.assemble((mark, request_color(view.id).hex), f"{view.id}"),)
    if priority:
        first += (Text(f"{view.priority}" if view.priority else "", justify="right"),)
    return first + (
        Text(visible(state), style=STATE_STYLE.get(state, "")),
        Text(f"{view.prefill_pos}/{view.prompt_len}", justify="right"),
        Text(f"{view.cached_tokens}" if view.cached_tokens else "–", justify="right",
             style="cyan" if view.cached_tokens else "dim"),
        Text(f"{view.generated}/{view.max_new_tokens}", justify="right"),
        Text("–" if view.ttft_steps is None else f"{view.ttft_steps}", justify="right"),
        Text(f"{view.num_preemptions}" if view.num_preemptions else "", style="bold red", justify="right"),
        # A scheduled request has no reason: the column shows its accepted/proposed drafts instead.
        Text(visible(view.reason or "") or drafts_cell(view),
             style="red" if view.reason and view.reason != "not arrived yet" else "dim"),
        Text(output_tail(view), style="italic"),
    )

class RequestSelected(Message):
    def __init__(self, request_id: int | None):
        super().__init__()
        self.request_id = request_id

class RequestsTable(DataTable, inherit_bindings=False):
    """Updated in place: cells change, rows are added; the cursor stays on its request.

    Nothing is selected at first (no cursor), so no request is singled out until the user
    picks one with up / down; escape clears the selection.
    """

    DEFAULT_CSS = """
    RequestsTable { height: 1fr; }
    """

    # Left and right belong to the app (history while paused), so the table keeps only
    # vertical movement; its columns fit the width instead of scrolling sideways.
    BINDINGS = [
        Binding("up", "cursor_up", "Cursor up", show=False),
        Binding("down", "cursor_down", "Cursor down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "scroll_top", "Top", show=False),
        Binding("end", "scroll_bottom", "Bottom", show=False),
        Binding("escape", "clear_selection", "Unselect", show=False),
    ]

    def __init__(self, **kwargs):
        super().__init__(cursor_type="row", zebra_stripes=False, show_cursor=False, **kwargs)
        self._shown: dict[int, tuple] = {}
        self._columns = COLUMNS
        self._priority = False

    def on_mount(self) -> None:
        for key, label, width in self._columns:
            self.add_column(label, key=key, width=width)

    def _show_priority(self) -> None:
        """Once, when a request with a priority first appears: the columns are laid out again."""
        self._priority = True
        self._columns = (COLUMNS[0], PRIORITY_COLUMN, *COLUMNS[1:])
        self.clear(columns=True)
        self._shown = {}
        self.on_mount()

    def show(self, views: Sequence[RequestView]) -> None:
        no_color = self.app.no_color
        if not self._priority and any(v.priority for v in views):
            self._show_priority()
        wanted = {v.id for v in views}
        for gone in set(self._shown) - wanted:  # a record holds the requests alive in its step
            self.remove_row(str(gone))
            del self._shown[gone]
        for view in views:
            cells = row_cells(view, no_color, self._priority)
            plain = tuple(str(c) for c in cells)
            old = self._shown.get(view.id)
            if old is None:
                self.add_row(*cells, key=str(view.id))
            elif old != plain:
                for (key, _, _), new, before in zip(self._columns, cells, old, strict=True):
                    if str(new) != before:
                        self.update_cell(str(view.id), key, new)
            self._shown[view.id] = plain

    def _start_selecting(self) -> bool:
        """The first up / down shows the cursor where it is instead of moving it."""
        if self.show_cursor:
            return False
        self.show_cursor = True
        self.post_message(RequestSelected(self.selected_request()))
        return True

    def action_cursor_up(self) -> None:
        if not self._start_selecting():
            super().action_cursor_up()

    def action_cursor_down(self) -> None:
        if not self._start_selecting():
            super().action_cursor_down()

    def action_clear_selection(self) -> None:
        self.show_cursor = False
        self.post_message(RequestSelected(None))

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.show_cursor and event.row_key.value is not None:
            self.post_message(RequestSelected(int(event.row_key.value)))

    def selected_request(self) -> int | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return int(key.value) if key.value is not None else None
