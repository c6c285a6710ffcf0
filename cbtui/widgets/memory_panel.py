"""Device memory, live: NVML used / total per visible GPU (or process RSS), with a sparkline,
beside the step's torch allocator, KV pool and weight figures."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from engine.records import MemoryView, ShardView
from engine.records.memory_reading import MemoryReading

from ..render.colors import BAD, GOOD, NOTE
from ..render.formatting import human_bytes

HISTORY = 120  # readings kept for the sparkline (one minute at two a second)


def reading_text(reading: MemoryReading | None, width: int) -> Text:
    if reading is None:
        return Text("reading memory…", style="dim")
    lines = []
    if reading.gpus:
        for gpu in reading.gpus:
            share = gpu.used_bytes / gpu.total_bytes if gpu.total_bytes else 0.0
            bar_width = max(width - 36, 4)
            filled = round(bar_width * share)
            lines.append(Text.assemble(
                (f"GPU{gpu.index} ", "bold"), (f"{gpu.name[:14]:<14} ", "dim"),
                f"{human_bytes(gpu.used_bytes)}/{human_bytes(gpu.total_bytes)} ",
                ("█" * filled, GOOD if share < 0.9 else BAD), ("░" * (bar_width - filled), "dim")))
    else:
        # Why there are no GPU figures (a CPU run has none): a note, not a warning; RSS follows.
        lines.append(Text(reading.note or "no GPU figures", style="dim"))
        if reading.source != "recorded":
            lines.append(Text.assemble(("process RSS ", "bold"), human_bytes(reading.rss_bytes)))
    text = Text("\n").join(lines)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def past_reading_text(step: int, memory: MemoryView) -> Text:
    """A past step (history): its own figures, as its record carries them, not this moment's."""
    text = Text.assemble((f"at step {step}", f"bold {NOTE}"), (" (history)", "dim"),
                         "\n", ("process RSS ", "bold"), human_bytes(memory.rss_bytes))
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def step_memory_text(memory: MemoryView | None, shards: list[ShardView] | None = None) -> Text:
    if memory is None:
        return Text("")
    if shards:  # one line per shard's process (RSS) or device (NVML), with its KV pool
        kind = "RSS" if memory.source == "rss" else "used"
        return Text("\n").join(Text.assemble((f"shard {s.rank} ", "bold"), (f"{s.device} {kind} ", "dim"),
                                             human_bytes(s.memory_bytes), ("  KV pool ", "dim"),
                                             human_bytes(s.pool_bytes))
                               for s in shards)
    text = Text.assemble(("KV pool ", "dim"), human_bytes(memory.kv_pool_bytes),
                         ("  weights ", "dim"), human_bytes(memory.weight_bytes))
    if memory.source == "cuda":
        text = Text("\n").join([Text.assemble(("torch allocated ", "dim"), human_bytes(memory.allocated_bytes),
                                              ("  reserved ", "dim"), human_bytes(memory.reserved_bytes)), text])
    return text


class MemoryPanel(Vertical):
    DEFAULT_CSS = """
    MemoryPanel { height: auto; }
    MemoryPanel > #memory-live { height: 2; }
    MemoryPanel > #memory-step { height: 1; }
    MemoryPanel > Sparkline { height: 1; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._history: deque[float] = deque(maxlen=HISTORY)
        self._reading: MemoryReading | None = None
        self._past: tuple[int, MemoryView] | None = None  # (step, its memory) while history is on screen
        self._shown: dict[str, Text] = {}  # Static id -> the text it shows

    def compose(self) -> ComposeResult:
        yield Static(reading_text(None, 40), id="memory-live")
        yield Sparkline([], id="memory-trend")
        yield Static("", id="memory-step")

    def show_reading(self, reading: MemoryReading) -> None:
        self._reading = reading
        if reading.source != "recorded":  # a replay has no live figures to draw a trend of
            self._history.append(float(reading.gpus[0].used_bytes if reading.gpus else reading.rss_bytes))
        self._show_reading()
        self.query_one("#memory-trend", Sparkline).data = list(self._history)

    def show_step(self, memory: MemoryView | None, past_step: int | None = None,
                  shards: list[ShardView] | None = None) -> None:
        """`past_step`: the step on screen is not this moment's (history): the reading shown is the one
        its record carries. `shards`: a sharded run's processes or devices, a line each."""
        self._past = (past_step, memory) if past_step is not None and memory is not None else None
        self._show("memory-step", step_memory_text(memory, shards))
        self._show_reading()

    def on_resize(self) -> None:
        self._show_reading()

    def _show_reading(self) -> None:
        if self._past is not None:
            text = past_reading_text(*self._past)
        elif self._reading is not None:
            text = reading_text(self._reading, self.size.width or 40)
        else:
            return
        self._show("memory-live", text)

    def _show(self, static_id: str, text: Text) -> None:
        """Updates only on change; a layout pass only when the number of lines changes."""
        static = self.query_one(f"#{static_id}", Static)
        if text == self._shown.get(static_id):
            return
        self._shown[static_id] = text
        lines = max(len(text.plain.split("\n")), 1)
        if static.styles.height is None or static.styles.height.value != lines:
            static.styles.height = lines
        static.update(text, layout=False)
