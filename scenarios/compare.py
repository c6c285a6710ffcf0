"""Variant comparison: run a scenario's [compare] variants and summarise each run from its StepRecords.

A scenario is one engine configuration; a comparison (static vs continuous, dense vs paged, a
budget sweep) is the same workload under a few configurations. Every figure here is computed from
StepRecords alone, like everything else the UI shows, so a recorded run summarises the same way.
"""

from __future__ import annotations

from engine.records import StepRecord
from engine.records.summary import RunSummary, summarize

from .loader import Scenario

MAX_COMPARE_STEPS = 100_000  # a variant that never finishes must not hang a headless run


def run_records(scenario: Scenario, variant: str | None = None, max_steps: int = MAX_COMPARE_STEPS,
                **overrides) -> list[StepRecord]:
    """Runs the scenario (or one variant) to the end, returning every StepRecord."""
    engine = scenario.build_engine(variant, **overrides)
    records: list[StepRecord] = []
    while engine.has_unfinished() and len(records) < max_steps:
        record = engine.step()
        if record is not None:  # None only from an overlapped engine, which a scenario never builds
            records.append(record)
    return records


def settings_label(scenario: Scenario, variant: str | None, **overrides) -> str:
    """The values, in this run, of every engine setting some variant changes."""
    keys = [k for v in scenario.variants.values() for k in v]
    config = scenario.engine_config(variant, **overrides)
    return " ".join(f"{k}={getattr(config, k)}" for k in dict.fromkeys(keys))


def compare(scenario: Scenario, base_records: list[StepRecord] | None = None,
            **overrides) -> list[RunSummary]:
    """One summary for the scenario as written (reusing base_records if given), one per variant."""
    if base_records is None:
        base_records = run_records(scenario, None, **overrides)
    rows = [summarize(base_records, "(scenario)", settings_label(scenario, None, **overrides))]
    for name in scenario.variants:
        rows.append(summarize(run_records(scenario, name, **overrides), name,
                              settings_label(scenario, name, **overrides)))
    return rows
