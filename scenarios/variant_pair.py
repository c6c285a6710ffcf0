"""Two runs of one scenario to show side by side (`cbtui compare`): which two, by name.

A run is named by one of:
  base              the scenario as written
  NAME              one of its [compare] variants (engine overrides)
  without:PLUGIN    the scenario without one of its declared [[plugins]] (priority_sla without priority)
The default pair is the base run and the first [compare] variant; a scenario with no variants but a
plugin compares the base run with the run without its first plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine import Engine

from .compare import settings_label
from .errors import ScenarioError
from .loader import Scenario

BASE = "base"
WITHOUT = "without:"


@dataclass(frozen=True)
class Variant:
    """One of the two runs: its name, and what builds it."""

    name: str
    scenario: Scenario  # the scenario as written, or a copy without a plugin
    compare_key: str | None  # the [compare] variant's name, None for the scenario's own settings

    def build_engine(self, **overrides) -> Engine:
        return self.scenario.build_engine(self.compare_key, **overrides)

    def settings(self, **overrides) -> str:
        """What sets this run apart, for its header: the settings some variant changes, the plugins."""
        label = settings_label(self.scenario, self.compare_key, **overrides)
        if self.name.startswith(WITHOUT):
            return " ".join(filter(None, (label, f"no {self.name[len(WITHOUT):]} plugin")))
        plugins = ",".join(p["name"] for p in self.scenario.plugins)
        return " ".join(filter(None, (label, plugins and f"plugin {plugins}")))


def variant_names(scenario: Scenario) -> list[str]:
    """Every name `cbtui compare` accepts for this scenario."""
    return [BASE, *scenario.variants, *(WITHOUT + p["name"] for p in scenario.plugins)]


def variant(scenario: Scenario, name: str) -> Variant:
    if name == BASE:
        return Variant(BASE, scenario, None)
    if name in scenario.variants:
        return Variant(name, scenario, name)
    declared = [p["name"] for p in scenario.plugins]
    if name.startswith(WITHOUT) and name[len(WITHOUT):] in declared:
        dropped = name[len(WITHOUT):]
        kept = [p for p in scenario.plugins if p["name"] != dropped]
        return Variant(name, replace(scenario, plugins=kept), None)
    raise ScenarioError(f"no variant {name!r} in scenario {scenario.name!r}; its variants: "
                        f"{', '.join(variant_names(scenario))}")


def fork_pair(scenario: Scenario, forked: Scenario, changes: tuple[str, ...]) -> tuple[Variant, Variant]:
    """The run as written and the same run with `changes` (STEP:KEY=VALUE) made as it goes: both
    are the same until the first change's step, and their records say so."""
    return Variant(BASE, scenario, None), Variant(f"fork {' '.join(changes)}", forked, None)


def variant_pair(scenario: Scenario, names: str | None = None) -> tuple[Variant, Variant]:
    """The two runs `names` ("a,b") asks for, or the default pair; ScenarioError says what is wrong."""
    if names is None:
        if scenario.variants:
            first = next(iter(scenario.variants))
            return variant(scenario, BASE), variant(scenario, first)
        if scenario.plugins:
            return variant(scenario, BASE), variant(scenario, WITHOUT + scenario.plugins[0]["name"])
        raise ScenarioError(f"scenario {scenario.name!r} has no [compare] variants and no plugins: nothing to "
                            f"compare its run with; add a [compare.NAME] table")
    parts = [p.strip() for p in names.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ScenarioError(f"--variants takes two names separated by a comma (e.g. --variants "
                            f"{','.join(variant_names(scenario)[:2])}); variants: {', '.join(variant_names(scenario))}")
    if parts[0] == parts[1]:
        raise ScenarioError(f"--variants names {parts[0]!r} twice; give two different variants: "
                            f"{', '.join(variant_names(scenario))}")
    return variant(scenario, parts[0]), variant(scenario, parts[1])
