"""The help screen: the scenario's story and question, and what each key does."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from engine.records.text import visible

KEYS = (
    ("space", "pause / resume (from a past step: back to live)"),
    ("n", "run one step (while paused)"),
    ("← / →", "while paused: previous / next step in history; → at the newest step runs one"),
    ("+ / -", "faster / slower (steps per second, up to max)"),
    ("↑ / ↓", "select a request: it is highlighted in the mask and KV panels"),
    ("z", "zoom the mask into the selected request's rows"),
    ("r", "restart the scenario (at the pace it opened with)"),
    ("d / enter", "the selected request's whole text so far (prompt and output), state, tokens, KV blocks"),
    ("a", "add a request: a prompt (a real model's chat template wraps it) and its max tokens; joins at the "
          "next step"),
    ("k", "knobs: every setting; turn a live one (budget, chunk, decode cap, policy, ...) from the next step"),
    ("f", "fork at the paused step: the compare view, the run as it went beside it changed from the next step"),
    ("x", "abort the selected request before the next step (its KV blocks freed, its tokens kept)"),
    ("b", "breakpoints: pause on a preemption, a step, low KV ... (list, add, clear)"),
    ("m", "metrics: TTFT / inter-token latency, throughput, memory profile and leak check"),
    ("t", "timeline: a row per request, a column per step (waiting, prefill, decode, preempted, finished)"),
    ("ctrl+p", "command palette (every action by name)"),
    ("?", "this help"),
    ("q", "quit"),
)

READING = (
    "Mask: rows are this step's query tokens, columns are keys (each request's cached history "
    "plus its new tokens). A cell is lit where that query may attend to that key: same request, "
    "key position <= query position. Each request has rows of its own (a decode one thin row); a cell "
    "may stand for several queries and keys (the scale line under the mask: 'cell ≈ 2–8 × 6.6'). "
    "Legend: 3d = request 3 decoding one token, 3p = a prefill chunk, 3p↺96 = a prefill that starts "
    "after 96 prompt tokens taken from the prefix cache. KV: a cell is a block, or several when the "
    "pool has more blocks than the panel has cells (the panel says '1 cell = 3 blocks' or '3/cell'); "
    "▁..█ = fill of a request's last block, · free, × freed now (the panel says whose and how many), "
    "② a block two requests share (prefix caching), ○ cached-free (nobody holds it; a later prompt may "
    "reuse it), □ reserved in a short request's contiguous run but not written yet (contiguous_up_to). "
    "Requests: output tail is the last tokens as text; · stands for a byte that is not printable text. "
    "Header: total tok/s counts prefill and decode tokens per engine second over the last 16 steps "
    "(output tokens per second are fewer); the budget panel's title gives the step's time in ms."
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 100; height: 90%; border: round $accent; padding: 0 1;
        background: $surface;
    }
    """

    def __init__(self, title: str, description: str, question: str, keys: tuple[tuple[str, str], ...] = KEYS):
        """From a scenario file or a recording: shown with their control characters made visible.
        `keys`: the app's own, where it has other keys than the dashboard (compare, a viewer)."""
        super().__init__()
        self._keys = keys
        self._title = visible(title)
        self._description = visible(description, newlines=True)
        self._question = visible(question, newlines=True)

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold")
        keys.add_column()
        for key, what in self._keys:
            keys.add_row(key, what)
        with VerticalScroll() as scroll:
            scroll.border_title = "Help (esc to close)"
            yield Static(Text(self._title, style="bold"))
            if self._description:
                yield Static(Text(self._description))
            if self._question:
                yield Static(Text.assemble(("Question: ", "bold"), self._question))
            yield Static(keys, classes="keys")
            yield Static(Text(READING, style="dim"))

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
