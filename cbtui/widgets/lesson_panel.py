"""The lesson's text above the panels: which lesson, what to watch and where, and a question."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static


def lesson_text(number: int, total: int, title: str, panel: str, watch: str, question: str,
                folded: bool = False) -> Group:
    """The title line (cut, never wrapped: the keys at its end are in the help too), then what to
    watch and the question; `folded`: the title line alone, so a small terminal keeps its rows."""
    keys = f"  t {'unfold' if folded else 'fold'}  ] next  [ prev  l menu"
    head = Text.assemble((f"Lesson {number}/{total}: {title}", "bold"), (keys, "dim"))
    head.no_wrap, head.overflow = True, "ellipsis"
    if folded:
        return Group(head)
    return Group(head, Text.assemble(("Watch ", "bold"), (f"({panel}): ", "italic"), watch, "\n",
                                     ("Ask: ", "bold yellow"), question))


class LessonPanel(Static):
    SCOPED_CSS = False  # the compact rule names the screen's class
    DEFAULT_CSS = """
    LessonPanel { height: auto; max-height: 7; padding: 0 1; background: $boost; }
    Screen.-compact LessonPanel { max-height: 5; }
    """
