"""The dashboard's --metrics-out and --trace-out: written when it quits, as a headless run writes them.

Metrics come from the collector the dashboard keeps anyway (aggregates). A trace needs every step,
which the dashboard does not keep (its history is bounded), so with --trace-out each record is
spooled as one JSON line to a temporary file beside the trace and streamed into it at the end: memory
stays flat however long the run. Both files are written whole or not at all (output_files).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from engine.records import StepRecord
from engine.records.metrics import MetricsCollector
from engine.records.metrics_export import export_metrics
from engine.records.output_files import OutputFileError
from engine.records.trace_export import check_trace_path, write_trace


class TraceSpool:
    """Records of the current run, one JSON line each, in a hidden file beside the trace."""

    def __init__(self, trace_path: str | os.PathLike):
        self.trace_path = check_trace_path(trace_path)
        self.path = self.trace_path.with_name(f".{self.trace_path.name}.{os.getpid()}.records.jsonl")
        try:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole run, closed in close()
        except OSError as exc:
            raise OutputFileError(f"{self.trace_path}: cannot write beside it ({exc.strerror or exc})") from None

    def observe(self, record: StepRecord) -> None:
        self._file.write(json.dumps(record.to_dict()) + "\n")

    def restart(self) -> None:
        """The run started over (r): the trace is of the new run."""
        self._file.seek(0)
        self._file.truncate()

    def records(self) -> Iterator[StepRecord]:
        self._file.flush()
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                yield StepRecord.from_dict(json.loads(line))

    def write(self) -> Path:
        return write_trace(self.records(), self.trace_path)

    def close(self) -> None:
        self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def write_outputs(metrics: MetricsCollector, metrics_out: str | None, spool: TraceSpool | None) -> list[str]:
    """Writes what was asked for; returns the lines saying where (for stderr). OutputFileError on failure."""
    said = []
    if metrics_out is not None:
        written = export_metrics(metrics, metrics_out)
        said.append(f"metrics written to {' and '.join(str(p) for p in written)}")
    if spool is not None:
        said.append(f"trace written to {spool.write()} (open it at ui.perfetto.dev)")
    return said
