"""Scenarios: TOML files that say what to run (engine settings and a workload)."""

from .errors import ScenarioError
from .loader import Scenario, builtin_names, load_scenario, loads

__all__ = ["Scenario", "ScenarioError", "builtin_names", "load_scenario", "loads"]
