"""Command-line options that shape a run beyond the engine's settings: `--without-plugin` and
`--break-on`. Each returns what the run needs or raises ValueError with the one line to show."""

from __future__ import annotations

from dataclasses import replace

from .breakpoints import Breakpoint, BreakpointError, parse


def without_plugins(scenario, names: tuple[str, ...]):
    """The scenario without its declared [[plugins]] named `names` (its title says so)."""
    if not names:
        return scenario
    declared = [p["name"] for p in scenario.plugins]
    for name in names:
        if name not in declared:
            has = f"declares only {', '.join(declared)}" if declared else "declares no plugin"
            raise ValueError(f"--without-plugin {name}: scenario {scenario.name!r} {has}")
    kept = [p for p in scenario.plugins if p["name"] not in names]
    return replace(scenario, plugins=kept, title=f"{scenario.title} (without {', '.join(names)})")


def breakpoints(specs: tuple[str, ...]) -> list[Breakpoint]:
    try:
        return [parse(spec) for spec in specs]
    except BreakpointError as exc:
        raise ValueError(f"--break-on: {exc}") from None
