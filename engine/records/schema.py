"""Does a parsed JSON line fit the StepRecord types? Each field's type, from the record classes'
own annotations, is checked before the record is built, so a recording from outside (recording.py)
fails with the path of the bad value ("requests[1].generated=-3 must be an integer >= 0") instead
of somewhere in a panel mid-replay. A checker is built once per type; paths only on failure.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields, is_dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

from .types import RunHeader, StepRecord

MAX_INT = 2**53  # JSON numbers beyond this are not exact anywhere
SIGNED = {"priority"}  # the one integer field that may be negative

MAX_FLOAT = float(2**53)  # seconds: sums of them stay finite, and so does everything computed from them
Check = Callable[[Any], None]  # raises _Bad when a parsed JSON value does not fit


def shown(value: Any, limit: int = 40) -> str:
    """repr(value) for an error message, cut short: a value from a file may be megabytes long."""
    if type(value) is int and not -10**limit < value < 10**limit:  # repr of a huge int is slow, and long
        return f"<an integer of more than {limit} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Bad(ValueError):
    """What is wrong, and where: the path is filled in on the way out (nothing built when all is well)."""

    def __init__(self, problem: str, path: str = ""):
        super().__init__(problem)
        self.problem, self.path = problem, path

    def inside(self, part: str) -> _Bad:
        return _Bad(self.problem, part + self.path)

    def __str__(self) -> str:
        path = self.path.lstrip(".")
        if path:
            return f"{path}{self.problem}"
        return self.problem[2:] if self.problem.startswith(": ") else f"the line{self.problem}"


def _at(part: str, key: object, check: Check, value: Any) -> None:
    """check(value); what it finds wrong gets part.format(key) (".field", "[3]") in front of its path,
    formatted only then: most values are fine."""
    try:
        check(value)
    except _Bad as bad:
        raise bad.inside(part.format(key)) from None


def _int(signed: bool) -> Check:
    low = -MAX_INT if signed else 0

    def check(value: Any) -> None:
        if type(value) is not int or not low <= value <= MAX_INT:  # type(): True is not an integer
            raise _Bad(f"={shown(value)} must be an integer" + ("" if signed else " >= 0"))
    return check


def _ints(value: Any) -> None:
    """A list of non-negative integers (output tails, block tables), checked in one pass."""
    if type(value) is not list:
        raise _Bad(" must be a list")
    if not all(type(v) is int for v in value) or (value and not 0 <= min(value) <= max(value) <= MAX_INT):
        raise _Bad(" must be a list of integers >= 0")


@cache
def _checker(hint: Any, name: str = "") -> Check:
    """A function that raises _Bad unless a parsed JSON value fits the type `hint` (built once per type)."""
    origin, args = get_origin(hint), get_args(hint)
    if is_dataclass(hint):
        hints = get_type_hints(hint)
        checks = {f.name: _checker(hints[f.name], f.name) for f in fields(hint)}
        required = [f.name for f in fields(hint) if f.default is MISSING and f.default_factory is MISSING]

        def check_object(value: Any) -> None:
            if type(value) is not dict:
                raise _Bad(" must be an object")
            for key in required:
                if key not in value:
                    raise _Bad(f": missing field {shown(key)}")
            for key, element in value.items():
                check = checks.get(key)
                if check is None:
                    raise _Bad(f": unknown field {shown(key)}")
                _at(".{}", key, check, element)
        return check_object
    if origin in (Union, types.UnionType):  # X | None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"no check for the type {hint!r}: only 'X | None' unions have a rule")
        inner = inner[0]
        check_inner = _checker(inner, name)
        return lambda value: None if value is None else check_inner(value)
    if hint is int:
        return _int(signed=name in SIGNED)
    if hint is bool:
        def check_bool(value: Any) -> None:
            if type(value) is not bool:
                raise _Bad(" must be true or false")
        return check_bool
    if hint is str:
        def check_str(value: Any) -> None:
            if type(value) is not str:
                raise _Bad(" must be a string")
        return check_str
    if hint is float:
        def check_float(value: Any) -> None:
            # a huge int is no float (math.isfinite(10**400) raises), and is caught by the bound first
            if type(value) not in (int, float) or not 0 <= value <= MAX_FLOAT or not math.isfinite(value):
                raise _Bad(" must be a number from 0 to 2**53")
        return check_float
    if origin in (list, tuple, Sequence):
        if args[0] is int:
            return _ints
        check_element = _checker(args[0])

        def check_list(value: Any) -> None:
            if type(value) is not list:
                raise _Bad(" must be a list")
            for i, element in enumerate(value):
                _at("[{}]", i, check_element, element)
        return check_list
    if origin in (dict, Mapping):  # keyed by request id
        check_value = _checker(args[1])

        def check_map(value: Any) -> None:
            if type(value) is not dict:
                raise _Bad(" must be an object")
            for key, element in value.items():
                if not (key.isascii() and key.isdigit()):  # '²' is a digit to isdigit, not to int()
                    raise _Bad(f": key {shown(key)} is not a request id")
                _at("[{}]", key, check_value, element)
        return check_map
    raise TypeError(f"no check for the type {hint!r}: a new StepRecord field needs a rule here")


def check_record_json(data: Any) -> None:
    """Raises ValueError naming the first value of `data` (json.loads of one line) that does not
    fit StepRecord."""
    _checker(StepRecord)(data)


def check_header_json(data: Any) -> None:
    """The same for a run header line (the first line of a recording made by --json)."""
    _checker(RunHeader)(data)
    if data.get("kind") != "header":
        raise ValueError(f"kind={shown(data.get('kind'))} must be 'header'")
