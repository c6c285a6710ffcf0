"""The `k` panel: every engine setting with its value, the live ones turnable between two steps.

A row is a setting: its value at the step just run, and whether it may change while the run goes
on ("live", with a change still waiting for its step) or why not. Enter on a row puts KEY=VALUE in
the field below; enter there asks the app to turn it (the app parses it and asks the engine, and
answers with `say`). The panel keeps its rows fresh with `fetch` while it is open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Static

from engine.records.text import visible

from .type_ahead import TypeAheadScreen

REFRESH_S = 0.5
NAME_WIDTH, VALUE_WIDTH = 24, 14


class KnobRow(Protocol):
    """cbtui.run.knobs.Knob, as this panel reads it."""

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def fixed_because(self) -> str | None: ...
    @property
    def pending(self) -> str | None: ...
    @property
    def help(self) -> str: ...


def status_cell(row: KnobRow) -> Text:
    if row.fixed_because is not None:
        return Text("fixed", style="dim")
    return Text(f"live → {row.pending}" if row.pending else "live", style="bold")


class KnobScreen(TypeAheadScreen[None]):
    FIELD = "#knob-input"
    # The field has the focus (what is typed goes there); the arrows move the table's cursor.
    BINDINGS = [Binding("escape", "dismiss", "Close"), Binding("up", "move(-1)", show=False),
                Binding("down", "move(1)", show=False), Binding("pageup", "move(-10)", show=False),
                Binding("pagedown", "move(10)", show=False)]

    DEFAULT_CSS = """
    KnobScreen { align: center middle; }
    KnobScreen > Vertical {
        width: 100%; max-width: 100; height: 100%; max-height: 40; border: round $accent; padding: 0 1;
        background: $surface;
    }
    KnobScreen DataTable { height: 1fr; min-height: 3; }
    KnobScreen Static { height: auto; }
    """

    def __init__(self, fetch: Callable[[], None], turn: Callable[[str], None]):
        """`fetch()` asks for the rows (the app answers with `show`); `turn(text)` asks to make the
        change typed as KEY=VALUE (the app answers with `say`)."""
        super().__init__()
        self._fetch, self._turn = fetch, turn
        self.rows: list[KnobRow] = []

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Knobs (↑/↓ and enter: edit a live one, enter: turn it; esc closes)"
            table: DataTable = DataTable(cursor_type="row", zebra_stripes=False, id="knob-table")
            table.can_focus = False
            yield table
            yield Static(id="knob-about")
            yield Input(placeholder="KEY=VALUE, e.g. max_tokens_per_step=96 (enter turns it at the next step)",
                        id="knob-input", select_on_focus=False)  # enter on a row: the value edited, not replaced
            yield Static(id="knob-message")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("setting", key="name", width=NAME_WIDTH)
        table.add_column("value", key="value", width=VALUE_WIDTH)
        table.add_column("mid-run", key="status")
        self.query_one(Input).focus()
        self._fetch()
        self.set_interval(REFRESH_S, self._fetch)

    def show(self, rows: Sequence[KnobRow]) -> None:
        """The settings as the engine has them now; the cursor stays on its setting."""
        table = self.query_one(DataTable)
        if [r.name for r in rows] != [r.name for r in self.rows]:
            table.clear()
            for row in rows:
                table.add_row(visible(row.name), visible(row.value), status_cell(row), key=row.name)
        else:
            for old, row in zip(self.rows, rows, strict=True):
                if old != row:
                    table.update_cell(row.name, "value", visible(row.value), update_width=True)
                    table.update_cell(row.name, "status", status_cell(row), update_width=True)
        self.rows = list(rows)
        self._about(table.cursor_row)

    def _about(self, index: int) -> None:
        """What the highlighted setting is, and why it cannot change if it cannot."""
        if not 0 <= index < len(self.rows):
            return
        row = self.rows[index]
        parts: list[tuple[str, str] | str] = [(row.name, "bold"), f": {row.help}"]
        if row.fixed_because is not None:
            parts.append((f" Fixed while the run goes on: {row.fixed_because}.", "dim"))
        self.query_one("#knob-about", Static).update(Text.assemble(*parts))

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._about(event.cursor_row)

    def action_move(self, rows: int) -> None:
        table = self.query_one(DataTable)
        table.move_cursor(row=max(0, min(table.cursor_row + rows, table.row_count - 1)))

    def _choose(self) -> None:
        """Enter on an empty field: the highlighted setting into it, to edit (or why it is fixed)."""
        index = self.query_one(DataTable).cursor_row
        if not 0 <= index < len(self.rows):
            return
        row = self.rows[index]
        if row.fixed_because is not None:
            self.say(f"{row.name} cannot change while the run goes on ({row.fixed_because})", error=True)
            return
        field = self.query_one(Input)
        field.value = f"{row.name}={row.value}"
        field.cursor_position = len(field.value)

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self._turn(event.value)
        else:
            self._choose()

    def say(self, line: str, error: bool = False) -> None:
        """One line under the field: the change made, or why not (the run goes on unchanged)."""
        self.query_one("#knob-message", Static).update(Text(visible(line), style="bold red" if error else "bold"))

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
