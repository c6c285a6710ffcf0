"""Changing a run while it runs: settings turned between two steps, at once or at a given step.

Which settings may change is written once, in each field's metadata (`live`): the scheduler's
(budget, chunk, decode cap, policy) and the number of speculative tokens. They change when tokens
are computed, never which, so greedy outputs stay those of each request run alone. The others
are fixed for the reason their section gives (`fixed_because`). A change is checked as a whole new
config (its ranges and its combinations) before anything is kept, and each applied change is told
in its step's record ("max_tokens_per_step 48 -> 96").
"""

from __future__ import annotations

from typing import Any

from .config import FLAT, SECTIONS, EngineConfig, setting_for


def why_fixed(name: str) -> str | None:
    """None when setting `name` may change mid-run; else why it may not (ValueError: no such setting)."""
    setting = setting_for(name)  # one line naming the closest setting when there is none
    if setting.live:
        return None
    return SECTIONS[FLAT[name].section].fixed_because


def parse_change(text: str) -> tuple[int, str, Any]:
    """STEP:KEY=VALUE (the command line's --at) -> (step, flat name, value of the setting's type);
    ValueError in one line for a malformed one or a setting that cannot change mid-run."""
    step, colon, change = text.partition(":")
    name, equals, _ = change.partition("=")
    if not (colon and equals and step.strip().isdigit() and name.strip()):
        raise ValueError(f"--at {text!r}: give STEP:KEY=VALUE, e.g. --at 20:max_tokens_per_step=96")
    try:
        name, value = parse_setting(change)
    except ValueError as exc:
        raise ValueError(f"--at {text!r}: {exc}") from None
    return int(step), name, value


def parse_setting(text: str) -> tuple[str, Any]:
    """KEY=VALUE (a change typed in the dashboard, the tail of --at) -> (flat name, value of the
    setting's type); ValueError in one line for a malformed one, an unknown setting, or one that
    cannot change mid-run."""
    name, equals, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not (equals and name):
        raise ValueError(f"{text!r}: give KEY=VALUE, e.g. max_tokens_per_step=96")
    reason = why_fixed(name)
    if reason is not None:
        raise ValueError(f"{name} cannot change while the run goes on ({reason}); these can: "
                         f"{', '.join(live_names())}")
    setting, value = setting_for(name), value.strip()
    if setting.optional and value.lower() == "none":
        return name, None
    if setting.type is int:
        if not value.lstrip("-").isdigit() or len(value) > 18:
            raise ValueError(f"{name} takes an integer, not {value[:20]!r}")
        return name, int(value)
    return name, value


def live_names() -> list[str]:
    return [name for name in FLAT if setting_for(name).live]


def changed_config(config: EngineConfig, changes: dict[str, Any]) -> EngineConfig:
    """The config with `changes` (flat names) made, checked whole; ValueError in one line, naming
    the setting, for one that cannot change mid-run or a value it cannot take."""
    for name in changes:
        reason = why_fixed(name)
        if reason is not None:
            live = ", ".join(live_names())
            raise ValueError(f"{name} cannot change while the run goes on ({reason}); these can: {live}")
    if "num_speculative_tokens" in changes and config.speculation is None:
        raise ValueError("num_speculative_tokens changes nothing without speculative decoding; start the run "
                         "with speculative = \"ngram\" or \"draft\"")
    return EngineConfig(**{**config.to_flat(), **changes})


class LiveChanges:
    """Changes waiting for their step: step -> settings to change before it is scheduled."""

    def __init__(self) -> None:
        self.pending: dict[int, dict[str, Any]] = {}

    def schedule(self, config: EngineConfig, step: int, now: int, changes: dict[str, Any]) -> None:
        """Keeps `changes` for step `step` (>= `now`, the next step) once they are known to apply
        to `config` (and to every change already waiting before them)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < now:
            raise ValueError(f"step {step!r} is in the past: the next step is {now}; give a step >= {now}")
        merged = {**self.pending.get(step, {}), **changes}
        changed_config(config, merged)  # refused here, not when the step comes
        self.pending[step] = merged

    def apply(self, config: EngineConfig, step: int) -> tuple[EngineConfig, list[str]]:
        """The config for `step`, and each change made, as its record tells it."""
        changes = self.pending.pop(step, None)
        if not changes:
            return config, []
        new = changed_config(config, changes)
        told = [f"{name} {config.value(name)} -> {new.value(name)}" for name in changes
                if config.value(name) != new.value(name)]
        return new, told
