"""What a config field accepts, written once in its metadata, and the one check that reads it.

Every field of a config section is declared with `setting(...)`: its type, help, choices, range and
command-line flag live in `field(metadata={"setting": Setting(...)})`. The section checks itself
with them (`Section.__post_init__`), the command line builds its options from them
(cbtui/engine_options.py) and the scenario loader its [engine] key checks (scenarios/loader.py),
so a rule about one setting is never restated elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Setting:
    """The metadata of one config field."""

    type: type  # int, float, bool or str
    help: str  # one sentence: `--help` shows it, and it is the field's documentation
    choices: tuple = ()  # the values a str field allows
    low: float | None = None  # a number's range, inclusive; no high: no upper bound
    high: float | None = None
    optional: bool = False  # None is allowed too (`help` says what it means)
    # The most a scenario file or a command-line flag may ask for, where that is stricter than
    # `high`: a typo in a file must not allocate gigabytes or start dozens of processes.
    limit: int | None = None
    flag: str | None = None  # the command-line option when it is not --the-name ("--no-x": a bool set to False)
    flag_help: str | None = None  # the option's help when it differs from `help` (a --no-x flag)
    metavar: str | None = None
    unit: str = ""  # a float's unit, named in its range message ("seconds")
    flat: str | None = None  # the flat name (EngineConfig(x=...), an [engine] key) when it is not the field's
    off: tuple = ()  # the switch of an optional section: these values mean "no such section"
    open_choice: str = ""  # besides `choices`, this kind of value (checked by its section): "a checkpoint directory"
    only_if: tuple[str, Any] | None = None  # takes effect only while this field of its section has this value
    # May change between two steps of a run (Engine.reconfigure, --at STEP:KEY=VALUE): it changes when
    # tokens are computed, never which. The others are fixed for the reason their section gives.
    live: bool = False


def setting(default: Any = MISSING, **metadata: Any) -> Any:
    """A dataclass field with its Setting (no default: the field is required)."""
    return field(default=default, metadata={"setting": Setting(**metadata)})


def setting_of(f: Field) -> Setting:
    return f.metadata["setting"]


def flat_name(f: Field) -> str:
    return setting_of(f).flat or f.name


def check_value(name: str, value: Any, s: Setting) -> None:
    """One field's own rule (type, choices, range); ValueError in one line naming `name`."""
    if s.optional and value is None:
        return
    if s.type is bool:
        if not isinstance(value, bool):
            allowed = "true, false or None (auto)" if s.optional else "true or false"
            raise ValueError(f"{name}={value!r} must be {allowed}")
    elif s.type is int:
        low = int(s.low if s.low is not None else 0)
        if isinstance(value, bool) or not isinstance(value, int):
            none = " or None" if s.optional else ""
            raise ValueError(f"{name}={value!r} must be an integer >= {low}{none}")
        if value < low or (s.high is not None and value > s.high):
            allowed = f">= {low}" if s.high is None else f"in {low}..{int(s.high)}"
            raise ValueError(f"{name}={value} is out of range; it must be {allowed}")
    elif s.type is float:
        bottom = s.low if s.low is not None else -math.inf
        top = s.high if s.high is not None else math.inf
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not bottom <= value <= top):
            unit = f" of {s.unit}" if s.unit else ""
            raise ValueError(f"{name}={value!r} must be a number{unit} in {bottom:g}..{top:g}")
    elif s.choices and not s.open_choice and value not in s.choices:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of: {', '.join(s.choices)}")


class Section:
    """A config section: a frozen dataclass whose fields are `setting`s. It checks each field by its
    metadata when it is built; a subclass adds the rules between its own fields after that."""

    __dataclass_fields__: ClassVar[dict[str, Field]]  # every subclass is a dataclass (for the type checker)
    # Why the section's settings that are not `live` cannot change while a run goes on.
    fixed_because: ClassVar[str] = "it is fixed when the engine is built"

    def __post_init__(self) -> None:
        for f in fields(self):
            check_value(flat_name(f), getattr(self, f.name), setting_of(f))
