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

from ..render.colors import BAD, FULL, GOOD, NONE, NOTE, WARN, color_mode, request_color, request_glyph
from ..render.formatting import count_of
from ..render.speculation_text import drafts_cell

TEXT_TAIL = 16
# (key, label, width): fixed widths, so updating a cell never re-measures the whole table. The reason
# and the output tail share what the other columns leave (column_widths), the reason first.
COLUMNS = (("id", "id", 5), ("state", "state", 9), ("prompt", "prompt", 7), ("gen", "gen", 7),
           ("ttft", "TTFT", 4), ("why", "why not scheduled", 0), ("text", "output tail", 0))
# Shown once a run needs them (a request with a priority, a prefix cache hit, a preemption, drafts
# proposed by speculative decoding: accepted/proposed), each after the column named: a small terminal
# keeps its room for the reason until then.
OPTIONAL = {"pri": (("pri", "pri", 3), "id"), "hit": (("hit", "hit", 4), "prompt"),
            "drafts": (("drafts", "drafts", 6), "gen"), "pre": (("pre", "pre", 3), "ttft")}
WHY_WIDTH = 28  # the longest reason the scheduler gives ("budget reserved for priority")
WHY_MIN = len("why not scheduled")  # most reasons fit the label's width ("no free KV blocks")
MIN_TAIL = 6  # narrower than this, the output tail says nothing: its room goes to the reason
CELL_PADDING = 1  # each side of every column
# Rows that matter first: what ran or was thrown out this step, then who waits; finished last.
STATE_ORDER = {"preempted": 0, "prefill": 1, "recompute": 1, "decode": 1, "waiting": 2, "pending": 3,
               "finished": 4, "aborted": 4}


def table_columns(extra: frozenset[str] | set[str] = frozenset()) -> tuple[tuple[str, str, int], ...]:
    """COLUMNS with the optional ones in `extra` in their places."""
    columns = []
    for column in COLUMNS:
        columns.append(column)
        columns += [spec for key, (spec, after) in OPTIONAL.items() if key in extra and after == column[0]]
    return tuple(columns)


def wanted_columns(views: Sequence[RequestView]) -> set[str]:
    """The optional columns these requests need."""
    extra = set()
    for view in views:
        if view.priority:
            extra.add("pri")
        if view.cached_tokens:
            extra.add("hit")
        if view.num_preemptions:
            extra.add("pre")
        if view.drafts_proposed:
            extra.add("drafts")
    return extra


def column_widths(width: int, longest_reason: int = WHY_WIDTH,
                  columns: tuple[tuple[str, str, int], ...] = COLUMNS) -> dict[str, int]:
    """Widths that fill `width` cells exactly (no sideways scrolling): fixed columns as given, the
    reason up to its longest, the output tail the rest (none when too narrow to read)."""
    widths = {key: w for key, _, w in columns if w}
    left = width - sum(widths.values()) - 2 * CELL_PADDING * len(columns)
    why = max(min(max(longest_reason, len("why not scheduled")), left - 2 * CELL_PADDING), 4)
    tail = min(left - why - 2 * CELL_PADDING, TEXT_TAIL)
    if tail < MIN_TAIL:
        why, tail = why + max(tail, 0), 0
    widths["why"], widths["text"] = why, tail
    return widths


STATE_STYLE = {"decode": GOOD, "prefill": WARN, "recompute": f"bold {WARN}", "waiting": NOTE,
               "preempted": f"bold {BAD}", "finished": "dim", "aborted": "dim", "pending": "dim"}


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


def id_cell(request_id: int, mode: str) -> Text:
    """The request's mark as the other panels draw it: its colour square, or (16 colours, NO_COLOR) its
    glyph, which is the id itself up to 9 and a letter after ("A=10")."""
    if mode == FULL:
        return Text.assemble(("■ ", request_color(request_id).hex), str(request_id))
    glyph = request_glyph(request_id)
    color = "" if mode == NONE else request_color(request_id, mode).hex
    if glyph == str(request_id):
        return Text(glyph, style=color)
    return Text.assemble((glyph, f"bold {color}"), f"={request_id}")


def row_cells(view: RequestView, mode: str,
              columns: tuple[tuple[str, str, int], ...] = COLUMNS) -> tuple[Text, ...]:
    """The cells of `columns` for one request. A recording's state and reason are any strings: their
    control characters are shown (the output tail's too: `output_tail`)."""
    state = state_name(view)
    widths = {key: width for key, _, width in columns}
    cells = {
        "id": lambda: id_cell(view.id, mode),
        "pri": lambda: Text(f"{view.priority}" if view.priority else "", justify="right"),
        "state": lambda: Text(visible(state), style=STATE_STYLE.get(state, "")),
        "prompt": lambda: Text(count_of(view.prefill_pos, view.prompt_len, widths["prompt"]), justify="right"),
        "hit": lambda: Text(f"{view.cached_tokens}" if view.cached_tokens else "", justify="right", style="cyan"),
        "gen": lambda: Text(count_of(view.generated, view.max_new_tokens, widths["gen"]), justify="right"),
        "ttft": lambda: Text("–" if view.ttft_steps is None else f"{view.ttft_steps}", justify="right"),
        "pre": lambda: Text(f"{view.num_preemptions}" if view.num_preemptions else "", style=f"bold {BAD}",
                            justify="right"),
        "drafts": lambda: Text(drafts_cell(view), justify="right"),
        # Only a request that did not run has a reason; the column holds nothing else.
        "why": lambda: Text(visible(view.reason or ""),
                            style=BAD if view.reason and view.reason != "not arrived yet" else "dim"),
        "text": lambda: Text(output_tail(view), style="italic"),
    }
    return tuple(cells[key]() for key, _, _ in columns)


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
    RequestsTable { height: 1fr; overflow-x: hidden; scrollbar-size-vertical: 1; }
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
        super().__init__(cursor_type="row", zebra_stripes=False, show_cursor=False, cell_padding=CELL_PADDING,
                         **kwargs)
        self._shown: dict[int, tuple] = {}
        self._views: Sequence[RequestView] = ()
        self._widths: dict[str, int] | None = None
        self._selected: int | None = None  # the request the cursor is on, followed as rows move
        self._sorted_as: list[str] | None = None  # row keys in table order, as last sorted
        self._extra: set[str] = set()  # optional columns shown (OPTIONAL)
        self._columns: tuple[tuple[str, str, int], ...] = COLUMNS  # (key, label, width) as laid out
        # The reason column is as wide as the longest reason seen (it only grows, so columns do not
        # jump back and forth): until a long one comes, the output tail keeps its room at 80 columns.
        self._why = WHY_MIN
        self._follow: int | None = None  # a request to select as soon as a record shows it (follow)

    def on_resize(self) -> None:
        self._fit_columns()

    def _fit_columns(self) -> None:
        """Columns sized to the table's width (less the vertical scrollbar): rebuilt when it changes."""
        width = self.size.width - self.styles.scrollbar_size_vertical
        columns = table_columns(self._extra)
        widths = column_widths(width, self._why, columns)
        if (widths == self._widths and columns == self._columns) or width <= 0:
            return
        self._widths, self._columns = widths, columns
        self.clear(columns=True)
        for key, label, _ in columns:
            self.add_column(label, key=key, width=widths[key])
        self._shown, self._sorted_as = {}, None
        self.show(self._views)

    def show(self, views: Sequence[RequestView]) -> None:
        self._views = views
        extra = wanted_columns(views) - self._extra
        why = min(max((len(v.reason or "") for v in views), default=0), WHY_WIDTH)
        if extra or why > self._why:  # once shown, a column stays, and the reason's only grows
            self._extra |= extra
            self._why = max(self._why, why)
            self._fit_columns()
            return  # _fit_columns showed the rows
        if self._widths is None:  # not laid out yet: the first resize adds the columns and the rows
            return
        mode = color_mode(self.app)
        wanted = {v.id for v in views}
        for gone in set(self._shown) - wanted:  # a record holds the requests alive in its step
            self.remove_row(str(gone))
            del self._shown[gone]
            self._sorted_as = None
        for view in views:
            cells = row_cells(view, mode, self._columns)
            plain = tuple(str(c) for c in cells)
            old = self._shown.get(view.id)
            if old is None:
                self.add_row(*cells, key=str(view.id))
                self._sorted_as = None
            elif old != plain:
                for (key, _, _), new, before in zip(self._columns, cells, old, strict=True):
                    if str(new) != before:
                        self.update_cell(str(view.id), key, new)
            self._shown[view.id] = plain
        self._order(views)

    def _order(self, views: Sequence[RequestView]) -> None:
        """Rows that matter on top (a small terminal shows four or five), and the cursor stays on its
        request (not its row number) as rows move, scrolled into view."""
        rank = {str(v.id): (STATE_ORDER.get(state_name(v), len(STATE_ORDER)), v.id) for v in views}
        order = sorted(rank, key=rank.__getitem__)
        if self._sorted_as != order:
            by_id_cell = {self._shown[int(key)][0]: rank[key] for key in order}
            self.sort("id", key=lambda cell: by_id_cell[str(cell)])
            self._sorted_as = order
        if self._follow is not None and str(self._follow) in rank:
            self.show_cursor, self._selected, self._follow = True, self._follow, None
        if self.show_cursor and self._selected is not None and str(self._selected) in rank:
            row = order.index(str(self._selected))
            if self.cursor_row != row:
                self.move_cursor(row=row, animate=False)
        elif not self.show_cursor:
            self.scroll_home(animate=False)

    def _start_selecting(self) -> bool:
        """The first up / down shows the cursor where it is instead of moving it."""
        if self.show_cursor:
            return False
        self.show_cursor = True
        self._selected = self.selected_request()
        self.post_message(RequestSelected(self._selected))
        return True

    def action_cursor_up(self) -> None:
        if not self._start_selecting():
            super().action_cursor_up()

    def action_cursor_down(self) -> None:
        if not self._start_selecting():
            super().action_cursor_down()

    def select(self, request_id: int) -> None:
        """Puts the cursor on `request_id`'s row (scrolled into view) as up / down would, e.g. for a
        lesson that names a request; nothing happens when the table has no such row."""
        if str(request_id) not in {str(key.value) for key in self.rows}:
            return
        self.show_cursor = True
        self._selected = request_id
        self.move_cursor(row=self.get_row_index(str(request_id)), animate=False)
        self.post_message(RequestSelected(request_id))

    def follow(self, request_id: int) -> None:
        """Selects `request_id` (a request just added): the cursor goes to its row once a record
        shows it, and stays with it as rows move."""
        self._follow = request_id
        if any(v.id == request_id for v in self._views):
            self._order(self._views)

    def action_clear_selection(self) -> None:
        self.show_cursor = False
        self._selected = None
        self.post_message(RequestSelected(None))

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.show_cursor and event.row_key.value is not None:
            self._selected = int(event.row_key.value)
            self.post_message(RequestSelected(self._selected))

    def selected_request(self) -> int | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return int(key.value) if key.value is not None else None
