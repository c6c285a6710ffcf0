"""Which engine settings take effect, given the others.

Some settings only matter under another one: `shard_by` with more than one shard, `draft_model`
with a draft model proposing, `static_batch_size` under the static policy. Outside its scope a
setting changes nothing in the run, so whatever tells runs apart by their settings (the compare
table's settings column, a compare pane's header) leaves it out.

The scopes follow from the config's nesting: a field of an optional section (speculation,
parallel) takes effect only when there is that section (its switch, `speculative` or `shards`,
always does: it says whether there is one); a field whose metadata has `only_if` only while that
other field of its section has that value (block_size with the paged layout, ...).
"""

from __future__ import annotations

from collections.abc import Callable

from . import FLAT, EngineConfig
from .engine_config import SWITCHES, Place


def _scope(place: Place) -> Callable[[EngineConfig], bool] | None:
    optional = place.section in SWITCHES and not place.setting.off
    only_if = place.setting.only_if
    if not optional and only_if is None:
        return None

    def scope(config: EngineConfig) -> bool:
        section = getattr(config, place.section)
        return section is not None and (only_if is None or getattr(section, only_if[0]) == only_if[1])
    return scope


# A flat setting -> whether it takes effect under a config; a setting not named here always does.
SCOPES: dict[str, Callable[[EngineConfig], bool]] = {
    name: scope for name, place in FLAT.items() if (scope := _scope(place)) is not None}


def takes_effect(config: EngineConfig, name: str) -> bool:
    """Whether setting `name` (a flat name) changes anything in a run under `config`."""
    scope = SCOPES.get(name)
    return scope is None or scope(config)
