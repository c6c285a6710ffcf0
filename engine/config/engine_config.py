"""EngineConfig: the sections by concern, and the flat names every setting also goes by.

    EngineConfig(max_tokens_per_step=96, kv_layout="dense")               flat keys (scenario files, tests)
    EngineConfig(scheduler=SchedulerConfig(max_tokens_per_step=96), ...)  sections
    EngineConfig(cache={"kv_layout": "dense"})                            a section as a dict ([engine.cache])

build the same config. Which section a flat key belongs to comes from the sections' fields
(FLAT, below), never from a hand-written table. Flat keys given beside a section override its
fields, which is what `dataclasses.replace(config, kv_layout="dense")` relies on.
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any

from . import combinations
from .cache import CacheConfig
from .fields import Section, Setting, check_value, flat_name, setting_of
from .model import ModelConfig
from .parallel import ParallelConfig
from .runner import RunnerConfig
from .scheduler import SchedulerConfig
from .speculative import SpeculativeConfig

# Section name -> its class, in the order flat names are listed. `llm` and `speculation` are not
# named `model` and `speculative`: those are flat names (which model; which method) that scenario
# files and the command line keep using.
SECTIONS: dict[str, type[Section]] = {
    "llm": ModelConfig, "scheduler": SchedulerConfig, "cache": CacheConfig, "runner": RunnerConfig,
    "speculation": SpeculativeConfig,  # None: nothing proposes
    "parallel": ParallelConfig,  # None: one device
}


@dataclass(frozen=True)
class Place:
    """Where a flat name lives: its section and its field there."""

    section: str
    spec: Field

    @property
    def field(self) -> str:
        return self.spec.name

    @property
    def setting(self) -> Setting:  # read from the field each time: its metadata is the one place
        return setting_of(self.spec)

    @property
    def default(self) -> Any:
        """The value in effect when the section is None or gives nothing (a switch: its first off value)."""
        return self.setting.off[0] if self.spec.default is MISSING else self.spec.default


def _places() -> dict[str, Place]:
    return {flat_name(f): Place(section, f)
            for section, cls in SECTIONS.items() for f in fields(cls)}


FLAT: dict[str, Place] = _places()
# An optional section's switch: the field whose `off` values mean there is no such section.
SWITCHES: dict[str, Place] = {p.section: p for p in FLAT.values() if p.setting.off}


def setting_for(name: str) -> Setting:
    """The metadata of a flat setting (ValueError naming the closest one for an unknown name)."""
    return _place(name).setting


def default_of(name: str) -> Any:
    return _place(name).default


def section_fields(section: str) -> dict[str, str]:
    """A section's field names -> their flat names."""
    return {p.field: name for name, p in FLAT.items() if p.section == section}


def _place(name: str) -> Place:
    place = FLAT.get(name)
    if place is None:
        raise ValueError(_unknown(name, None, list(FLAT), "an engine setting"))
    return place


def _unknown(key: str, value: Any, known: list[str], what: str) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{key}={shown} is not {what}; {hint}" if value is not None else f"{key} is not {what}; {hint}"


def _build(name: str, given: Any, overrides: dict[str, Any]) -> Section | None:
    """One section from what was given for it (a section, a dict of its fields, or None) with the
    flat keys that belong to it on top; None for an optional section switched off."""
    cls = SECTIONS[name]
    known = [f.name for f in fields(cls)]
    if isinstance(given, cls):
        values = {key: getattr(given, key) for key in known}
    elif isinstance(given, dict):
        for key in given:
            if key not in known:
                raise ValueError(_unknown(f"{name}.{key}", given[key], [f"{name}.{k}" for k in known],
                                          f"a {name} setting"))
        values = dict(given)
    elif given is None:
        values = {}
    else:
        raise ValueError(f"{name}={given!r} must be a {cls.__name__}, a dict of its fields or None")
    values.update(overrides)
    switch = SWITCHES.get(name)
    if switch is not None and values.get(switch.field, switch.default) in switch.setting.off:
        flat = {p.field: flat for flat, p in FLAT.items() if p.section == name}
        for key, value in values.items():  # a setting without effect still has to be a valid one
            check_value(flat[key], value, FLAT[flat[key]].setting)
        return None
    return cls(**values)


@dataclass(frozen=True, init=False)
class EngineConfig:
    """Every knob of the engine, by concern: each section checks itself when it is built, and
    combinations.check what two sections must agree on once all are."""

    llm: ModelConfig  # which model, where, in what precision, when sequences end
    scheduler: SchedulerConfig  # what one step takes on
    cache: CacheConfig  # how the KV cache is laid out, sized and shared
    runner: RunnerConfig  # how a step executes (kernels, graphs, overlap): runner.py says why a section
    speculation: SpeculativeConfig | None  # None: no speculative decoding
    parallel: ParallelConfig | None  # None: one device (shards=1)

    def __init__(self, *, llm: ModelConfig | dict | None = None, scheduler: SchedulerConfig | dict | None = None,
                 cache: CacheConfig | dict | None = None, runner: RunnerConfig | dict | None = None,
                 speculation: SpeculativeConfig | dict | None = None, parallel: ParallelConfig | dict | None = None,
                 **flat: Any) -> None:
        given = {"llm": llm, "scheduler": scheduler, "cache": cache, "runner": runner, "speculation": speculation,
                 "parallel": parallel}
        overrides: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in flat.items():
            place = FLAT.get(key)
            if place is None:
                raise ValueError(_unknown(key, value, list(FLAT), "an engine setting"))
            overrides[place.section][place.field] = value
        for name in SECTIONS:
            object.__setattr__(self, name, _build(name, given[name], overrides[name]))
        combinations.check(self)

    @classmethod
    def field_names(cls) -> list[str]:
        """Every flat name, section by section."""
        return list(FLAT)

    def value(self, name: str) -> Any:
        """The value of flat setting `name` in this config (its default where its section is None)."""
        place = _place(name)
        section = getattr(self, place.section)
        return place.default if section is None else getattr(section, place.field)

    def to_flat(self) -> dict[str, Any]:
        """Every flat name -> its value; EngineConfig(**config.to_flat()) == config."""
        return {name: self.value(name) for name in FLAT}

    @property
    def caches_prefixes(self) -> bool:
        """Whether prefix caching is on (None resolved: see combinations.caches_prefixes)."""
        return combinations.caches_prefixes(self)
