"""A plugin spec as typed on the command line: NAME, or NAME:key=value,... with options.

    adaptive_batch                         a built-in (or entry point) with its defaults
    adaptive_batch:target_ms=5,gain=0.25   the same with options
    mypkg.mod:MyPlugin                     module:Class (a colon, but no '=' after it)
    mypkg.mod:MyPlugin:threshold=3         module:Class with options

Options follow the last colon when that part holds an '='. Values read as TOML scalars would:
integers, then floats, then true/false; anything else is a string.
"""

from __future__ import annotations

import re

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_value(text: str) -> int | float | bool | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_plugin_spec(spec: str) -> tuple[str, dict]:
    """(name, options) of a spec; ValueError (one line, naming the spec) when the options are malformed."""
    name, colon, tail = spec.rpartition(":")
    if not colon or "=" not in tail:
        return spec, {}
    options: dict = {}
    for part in tail.split(","):
        key, equals, value = part.partition("=")
        key = key.strip()
        if not equals or not _KEY.match(key):
            raise ValueError(f"plugin spec {spec!r}: {part!r} is not key=value; write NAME:key=value,key=value "
                             f"(e.g. adaptive_batch:target_ms=5)")
        if key in options:
            raise ValueError(f"plugin spec {spec!r}: option {key!r} is given twice")
        options[key] = parse_value(value.strip())
    if not name:
        raise ValueError(f"plugin spec {spec!r}: no plugin name before the options; write NAME:key=value,...")
    return name, options
