"""The `d` screen: the selected request's whole text so far (prompt, then output), its state, its
tokens and its KV blocks, kept up to date while the run goes on.

The text is the model's own (a real tokenizer's newlines, quotes and anything a prompt brought
along): every control character is written out (`visible`), so nothing typed into a prompt can
reach the terminal raw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from engine.records.text import visible

REFRESH_S = 0.5
SHOWN_BLOCKS = 24  # a long request's block list is cut, with how many more


class RequestDetail(Protocol):
    """cbtui.run.request_text.RequestText, as this screen reads it."""

    @property
    def request_id(self) -> int: ...
    @property
    def step(self) -> int | None: ...
    @property
    def state(self) -> str: ...
    @property
    def prompt(self) -> str | None: ...
    @property
    def output(self) -> str: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def computed(self) -> int | None: ...
    @property
    def generated(self) -> int: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def whole(self) -> bool: ...


def safe(text: str) -> str:
    """Control characters written out, line breaks kept; U+FFFD (half a character) as a dot."""
    return visible(text.replace("\ufffd", "\u00b7"), newlines=True)


def blocks_text(blocks: Sequence[int] | None) -> str:
    if blocks is None:
        return "no KV blocks (dense cache)"
    if not blocks:
        return "no KV blocks held"
    shown = " ".join(str(b) for b in blocks[:SHOWN_BLOCKS])
    more = f" … +{len(blocks) - SHOWN_BLOCKS}" if len(blocks) > SHOWN_BLOCKS else ""
    return f"{len(blocks)} KV blocks: {shown}{more}"


def facts(detail: RequestDetail, state: str, blocks: Sequence[int] | None) -> Text:
    """One line: state, tokens, blocks, and the step the text stands at."""
    computed = "" if detail.computed is None else f", {detail.computed} in the KV cache"
    at = "before the first step" if detail.step is None else f"after step {detail.step}"
    return Text.assemble((visible(state), "bold"),
                         f" · prompt {detail.prompt_tokens} tokens{computed} · output "
                         f"{detail.generated}/{detail.max_new_tokens} · {blocks_text(blocks)} · {at}")


def body(detail: RequestDetail) -> Text:
    """The prompt (dim), then the output (bold): the whole text, escaped."""
    if detail.prompt is None:
        prompt = Text(f"(a prompt of {detail.prompt_tokens} tokens, whose text this run does not keep)\n",
                      style="dim italic")
    else:
        prompt = Text(safe(detail.prompt), style="dim")
    output = Text(safe(detail.output), style="bold")
    if not detail.whole:
        output = Text.assemble(("… ", "dim"), output, ("\n(a recording keeps only the output's last tokens)",
                                                      "dim italic"))
    return Text.assemble(prompt, ("\n── output ──\n", "dim"), output)


class RequestDetailScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,d,q", "dismiss", "Close")]

    DEFAULT_CSS = """
    RequestDetailScreen { align: center middle; }
    RequestDetailScreen > VerticalScroll {
        width: 100%; height: 100%; border: round $accent; padding: 0 1; background: $surface;
    }
    RequestDetailScreen Static { height: auto; }
    """

    def __init__(self, request_id: int, fetch: Callable[[int], None]):
        """`fetch(request_id)` asks for the text now; the app answers with `show`."""
        super().__init__()
        self.request_id = request_id
        self._fetch = fetch
        self.detail: RequestDetail | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = f"Request {self.request_id} (d or esc closes)"
            yield Static(Text("reading its text…", style="dim"), id="detail-facts")
            yield Static(id="detail-text")

    def on_mount(self) -> None:
        self._fetch(self.request_id)
        self.set_interval(REFRESH_S, lambda: self._fetch(self.request_id))

    def show(self, detail: RequestDetail, state: str, blocks: Sequence[int] | None) -> None:
        """`state` and `blocks` as the newest record has them (it says aborted, the engine finished)."""
        if detail == self.detail and str(self.query_one("#detail-facts", Static).render()) == str(
                facts(detail, state, blocks)):
            return
        scroll = self.query_one(VerticalScroll)
        following = scroll.scroll_y >= scroll.max_scroll_y  # at the end: stay there as the output grows
        self.detail = detail
        self.query_one("#detail-facts", Static).update(facts(detail, state, blocks))
        self.query_one("#detail-text", Static).update(body(detail))
        if following:
            scroll.call_after_refresh(scroll.scroll_end, animate=False)

    def say(self, line: str) -> None:
        """Why there is no text (a request not in the run yet, the engine stopped)."""
        self.query_one("#detail-facts", Static).update(Text(visible(line), style="bold red"))
