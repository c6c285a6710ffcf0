"""Where a plugin comes from: a built-in name, a `cbtui.plugins` entry point, or `module:Class`.

Where plugins come from is the caller's trust decision: a built-in name or an installed entry point
is code already on the machine; `module:Class` imports whatever module that names, so scenario
files may not use it unless the user says so (scenarios/loader.py, `cbtui scenario --trust-plugins`).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import Plugin, PluginAbort, describe_exception, one_line, plugin_name
from .builtin import BUILTIN

ENTRY_POINT_GROUP = "cbtui.plugins"


def builtin_plugins() -> dict[str, type]:
    return dict(BUILTIN)


def is_module_spec(spec: str) -> bool:
    """Whether `spec` names a `module:Class` (code to import) rather than a built-in or an entry point."""
    return ":" in spec and spec not in builtin_plugins()


def load_plugin(spec: str, options: dict | None = None) -> Plugin:
    """A plugin from a built-in name, a `cbtui.plugins` entry point, or `module:Class`.

    Raises ValueError (one line) when it cannot be made, PluginAbort when importing or creating it
    raised SystemExit or KeyboardInterrupt."""
    options = options or {}
    builtins = builtin_plugins()
    if spec in builtins:
        cls = builtins[spec]
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # whatever importing user code raises
            raise ValueError(f"plugin {spec!r} cannot be loaded: {one_line(exc)}; give module:Class on the "
                             f"Python path") from None
        except BaseException as exc:  # SystemExit, KeyboardInterrupt at import time
            raise PluginAbort(spec, "import", exc) from exc
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not found:
            raise ValueError(f"unknown plugin {spec!r}; built-in plugins: {', '.join(sorted(builtins))}, "
                             f"or an entry point in group {ENTRY_POINT_GROUP!r}, or module:Class")
        try:
            cls = found[0].load()
        except Exception as exc:  # an installed package that fails to import
            raise ValueError(f"plugin {spec!r} (entry point) cannot be loaded: {describe_exception(exc)}") from None
        except BaseException as exc:
            raise PluginAbort(spec, "import", exc) from exc
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise ValueError(f"plugin {spec!r} is not a SchedulerPlugin, AttentionPlugin or CachePlugin class")
    try:
        plugin = cls(**options)
    except ValueError as exc:
        raise ValueError(f"plugin {spec!r}: {one_line(exc)}") from None
    except Exception as exc:  # e.g. TypeError for an unknown option
        raise ValueError(f"plugin {spec!r} cannot be created with options {options!r}: "
                         f"{describe_exception(exc)}") from None
    except BaseException as exc:  # SystemExit or KeyboardInterrupt in __init__
        raise PluginAbort(spec, "__init__", exc) from exc
    plugin_name(plugin)  # a plugin without a usable name fails here, not in the middle of a run
    return plugin
