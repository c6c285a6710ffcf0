"""Variant comparison: run a scenario's [compare] variants and summarise each run from its StepRecords.

A scenario is one engine configuration; a comparison (static vs continuous, dense vs paged, a
budget sweep) is the same workload under a few configurations. Every figure here is computed from
StepRecords alone, like everything else the UI shows, so a recorded run summarises the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

from engine.config.scope import takes_effect
from engine.records import StepRecord
from engine.records.summary import RunSummary, RunTotals, summarize

from .loader import Scenario

MAX_COMPARE_STEPS = 100_000  # a variant that never finishes must not hang a headless run


def iter_records(scenario: Scenario, variant: str | None = None, max_steps: int = MAX_COMPARE_STEPS,
                 **overrides) -> Iterator[StepRecord]:
    """Runs the scenario (or one variant) to the end, handing out each StepRecord as it comes."""
    engine = scenario.build_engine(variant, **overrides)
    steps = 0
    try:
        while engine.has_unfinished() and steps < max_steps:
            record = engine.step()
            if record is not None:  # None only from an overlapped engine, which a scenario never builds
                steps += 1
                yield record
    finally:
        engine.close()  # a sharded variant's workers stop here, before the next variant starts its own


def run_records(scenario: Scenario, variant: str | None = None, max_steps: int = MAX_COMPARE_STEPS,
                **overrides) -> list[StepRecord]:
    """Every StepRecord of the run (tests; a long run should stream through iter_records)."""
    return list(iter_records(scenario, variant, max_steps, **overrides))


def settings_label(scenario: Scenario, variant: str | None, **overrides) -> str:
    """The values, in this run, of every engine setting some variant changes and this run's other
    settings give effect to (no shard_by in a one-shard run: it changes nothing there)."""
    keys = [k for v in scenario.variants.values() for k in v]
    config = scenario.engine_config(variant, **overrides)
    label = " ".join(f"{k}={config.value(k)}" for k in dict.fromkeys(keys) if takes_effect(config, k))
    if scenario.variant_plugins:  # some variant runs other plugins: say which each row runs
        plugins = scenario.variant_plugins.get(variant, scenario.plugins) if variant else scenario.plugins
        label = f"{label} plugins={','.join(p['name'] for p in plugins) or 'none'}".strip()
    return label


def compare(scenario: Scenario, base: RunTotals | list[StepRecord] | None = None,
            **overrides) -> list[RunSummary]:
    """One summary for the scenario as written (from `base` if given: its totals or its records), one
    per variant; each variant's records are summarised as they come, never kept."""
    label = settings_label(scenario, None, **overrides)
    if isinstance(base, RunTotals):
        rows = [base.summary("(scenario)", label)]
    else:
        rows = [summarize(base if base is not None else iter_records(scenario, None, **overrides), "(scenario)",
                          label)]
    for name in scenario.variants:
        rows.append(summarize(iter_records(scenario, name, **overrides), name,
                              settings_label(scenario, name, **overrides)))
    return rows
