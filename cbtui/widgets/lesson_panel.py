"""The lesson's text above the panels: which lesson, what to watch and where, and a question."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static


def lesson_text(number: int, total: int, title: str, panel: str, watch: str, question: str,
                folded: bool = False, keys: str = "all") -> Group:
    """The title line (cut, never wrapped: the keys at its end are in the help too), then what to
    watch and the question; `folded`: the title line alone, so a small terminal keeps its rows.
    `keys`: which lesson keys the title names: "all", "fold" (a presented lesson: one a session) or
    "none" (a class's viewer has none of them)."""
    fold = f"  t {'unfold' if folded else 'fold'}"
    keys_text = {"all": f"{fold}  ] next  [ prev  l menu", "fold": fold}.get(keys, "")
    head = Text.assemble((f"Lesson {number}/{total}: {title}", "bold"), (keys_text, "dim"))
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
    /* A lesson whose panels need the rows (Lesson.fold_table) takes them from the Requests table on
       a small terminal: at 80x24 the mask, KV and Memory panels otherwise keep a row or two each. */
    Screen.-compact.-fold-table #requests-panel { display: none; }
    """
