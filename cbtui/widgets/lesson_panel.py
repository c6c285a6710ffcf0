"""The lesson's text above the panels: which lesson, what to watch and where, and a question."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def lesson_text(number: int, total: int, title: str, panel: str, watch: str, question: str,
                folded: bool = False) -> Text:
    """`folded`: the title line alone, so a small terminal gives its rows back to the panels."""
    keys = f"  t {'unfold' if folded else 'fold'}  ] next  [ prev  l menu"
    text = Text.assemble((f"Lesson {number}/{total}: {title}", "bold"), (keys, "dim"))
    if folded:
        text.no_wrap, text.overflow = True, "ellipsis"
        return text
    return text.append_text(Text.assemble("\n", ("Watch ", "bold"), (f"({panel}): ", "italic"), watch, "\n",
                                          ("Ask: ", "bold yellow"), question))


class LessonPanel(Static):
    SCOPED_CSS = False  # the compact rule names the screen's class
    DEFAULT_CSS = """
    LessonPanel { height: auto; max-height: 7; padding: 0 1; background: $boost; }
    Screen.-compact LessonPanel { max-height: 5; }
    """
