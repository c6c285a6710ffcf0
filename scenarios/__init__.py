"""Scenarios: TOML files that say what to run (engine settings and a workload)."""

from .loader import Scenario, ScenarioError, builtin_names, load_scenario

__all__ = ["Scenario", "ScenarioError", "builtin_names", "load_scenario"]
