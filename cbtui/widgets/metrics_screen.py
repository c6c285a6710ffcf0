"""The metrics screen (key m): latency distributions, throughput over time, memory profile."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..render.metrics_view import render_metrics

REFRESH_S = 0.5


class MetricsScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,m,q", "dismiss", "Close")]

    DEFAULT_CSS = """
    MetricsScreen { align: center middle; }
    MetricsScreen > VerticalScroll {
        width: 100%; height: 100%; border: round $accent; padding: 0 1; background: $surface;
    }
    """

    def __init__(self, source):
        """`source()` returns (MetricsCollector, MemoryProfiler, annotations) as of now."""
        super().__init__()
        self._source = source

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = "Metrics (m or escape to close)"
            yield Static(id="metrics-body")

    def on_mount(self) -> None:
        self.refresh_metrics()
        self.set_interval(REFRESH_S, self.refresh_metrics)

    def refresh_metrics(self) -> None:
        collector, profiler, annotations = self._source()
        width = max(40, self.size.width - 4)
        self.query_one("#metrics-body", Static).update(render_metrics(collector, profiler, annotations,
                                                                      width=width))
