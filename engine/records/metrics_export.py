"""Writing a MetricsCollector to files: JSON (everything) or CSV (one table per file).

CSV cannot hold three tables in one file, so `export_metrics("run.csv")` writes the per-request table
to run.csv and the per-step table to run.steps.csv (and says so in its return value). The summary
lives only in the JSON.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .metrics import MetricsCollector, RequestMetrics, StepStats
from .output_files import check_output_path, write_atomically

FORMATS = (".json", ".csv")
# Lists do not fit a CSV cell; their mean and max are columns already.
_REQUEST_CSV_SKIP = {"itl_steps", "itl_s"}
REQUEST_COLUMNS = [f.name for f in fields(RequestMetrics) if f.name not in _REQUEST_CSV_SKIP]
STEP_COLUMNS = [f.name for f in fields(StepStats)]


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON; they only come from broken inputs, so write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def check_export_path(path: str | os.PathLike) -> list[Path]:
    """Checks before a run what export_metrics will write, so a typo fails fast, not after the run."""
    p = check_output_path(path, FORMATS)
    return [p] if p.suffix.lower() == ".json" else [p, check_output_path(steps_csv_path(p), (".csv",))]


def write_json(collector: MetricsCollector, path: str | os.PathLike) -> Path:
    p = check_output_path(path, (".json",))
    data = _json_safe(collector.to_dict())
    write_atomically(p, lambda f: json.dump(data, f, indent=1, allow_nan=False))
    return p


def _write_table(path: Path, columns: list[str], rows: list[dict]) -> None:
    def write(f):
        out = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        out.writeheader()
        for row in rows:
            out.writerow({k: "" if v is None else v for k, v in row.items()})  # None: an empty cell

    write_atomically(path, write)


def steps_csv_path(path: str | os.PathLike) -> Path:
    """run.csv -> run.steps.csv, next to it."""
    p = Path(path).expanduser()
    return p.with_name(p.stem + ".steps" + p.suffix)


def write_csv(collector: MetricsCollector, path: str | os.PathLike) -> list[Path]:
    """Per-request table at `path`, per-step table at steps_csv_path(path); returns both paths."""
    p = check_output_path(path, (".csv",))
    steps_p = check_output_path(steps_csv_path(p), (".csv",))
    _write_table(p, REQUEST_COLUMNS, [asdict(r) for r in collector.requests()])
    _write_table(steps_p, STEP_COLUMNS, [asdict(s) for s in collector.steps])
    return [p, steps_p]


def export_metrics(collector: MetricsCollector, path: str | os.PathLike) -> list[Path]:
    """Writes JSON or CSV by the file's suffix; returns the paths written."""
    p = check_export_path(path)[0]
    if p.suffix.lower() == ".json":
        return [write_json(collector, p)]
    return write_csv(collector, p)
