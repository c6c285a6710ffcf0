"""Checks plain TOML values against what a scenario allows.

Every check either returns a clean Python value or raises one ScenarioError line of the form
`FILE: WHERE KEY: what is wrong; what is allowed`, so a bad file never shows a traceback.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
from collections.abc import Iterable
from typing import NoReturn

from .errors import ScenarioError


def toml_type(value) -> str:
    """The TOML name of a parsed value's type, for 'got ...' in messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime.date, datetime.time)):
        return "a date/time"
    return type(value).__name__


def show(value) -> str:
    """A short rendering of a bad value for a one-line message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def toml_key(key) -> str:
    """A key as it would be written in the file: bare when TOML allows it, else quoted with its
    control characters escaped (a key holding a newline must not break the one-line message)."""
    key = str(key)
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Checker:
    """Validates the keys of one table; `where` names the table in messages (e.g. '[engine] ')."""

    def __init__(self, file: str, where: str = ""):
        self.file = file
        self.where = where

    def at(self, where: str) -> Checker:
        return Checker(self.file, where)

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ScenarioError(f"{self.file}: {self.where}{key}: {problem}")

    # -- structure ---------------------------------------------------------------------------
    def keys(self, table: dict, allowed: Iterable[str]) -> None:
        """Unknown keys are errors, with a 'did you mean' when one is close."""
        allowed = list(allowed)
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(toml_key(key), f"unknown key; {hint}allowed keys: {', '.join(allowed)}")

    def table(self, value, key: str) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"must be a table, got {toml_type(value)}")
        return value

    def tables(self, value, key: str) -> list[dict]:
        """An array of tables ([[key]] in TOML)."""
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(key, f"must be an array of tables (write each entry as [[{key}]]), "
                           f"got {toml_type(value)}")
        return value

    # -- scalars -----------------------------------------------------------------------------
    def integer(self, table: dict, key: str, default, low: int, high: int):
        value = table.get(key, default)
        if value is None and default is None:
            return None
        self.check_int(value, key, low, high)
        return value

    def check_int(self, value, key: str, low: int, high: int) -> None:
        if not is_int(value):
            self.fail(key, f"must be an integer from {low} to {high}, got {toml_type(value)} {show(value)}")
        if not low <= value <= high:
            self.fail(key, f"must be an integer from {low} to {high}, got {value}")

    def number(self, table: dict, key: str, default: float, low: float, high: float) -> float:
        value = table.get(key, default)
        allowed = f"must be a number from {low} to {high}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"{allowed}, got {toml_type(value)} {show(value)}")
        if not math.isfinite(value) or not low <= value <= high:
            self.fail(key, f"{allowed}, got {value}")
        return float(value)

    def boolean(self, table: dict, key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {toml_type(value)} {show(value)}")
        return value

    def string(self, table: dict, key: str, default: str | None = None, max_len: int = 10_000) -> str:
        value = table.get(key, default)
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {toml_type(value)} {show(value)}")
        if len(value) > max_len:
            self.fail(key, f"is {len(value)} characters long; at most {max_len} are allowed")
        return value

    def choice(self, table: dict, key: str, default: str | None, allowed: Iterable[str]) -> str:
        allowed = list(allowed)
        value = table.get(key, default)
        if value not in allowed or not isinstance(value, str):
            close = difflib.get_close_matches(value, allowed, n=1) if isinstance(value, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(key, f"{show(value)} is not allowed{hint}; choose one of: "
                           f"{', '.join(repr(a) for a in allowed)}")
        return value
