"""The header keeps `Step <n>` in view and shows plugin notes and errors."""

from cbtui.widgets.header import HeaderInfo, StepHeader


def test_step_comes_first_and_plugin_notes_follow_the_counts():
    info = HeaderInfo(scenario="A very long scenario title " * 3, engine="tiny · cpu · sdpa · paged", step=12,
                      run_state="paused", speed="4/s", running=5, notes=("budget 48 -> 64 (adaptive)",),
                      errors=("plugin x disabled: before_step raised Boom",))
    line1, line2 = StepHeader.text_for(info).plain.split("\n")
    assert line1.startswith("Step 12 paused")
    assert "budget 48 -> 64 (adaptive)" in line2 and "plugin x disabled" in line2
    assert line2.index("running 5") < line2.index("plugin x disabled") < line2.index("budget 48")


def test_a_note_that_does_not_fit_beside_the_counts_gets_its_own_line_at_80_columns():
    note = "8 tokens reserved for 2 high-priority"
    info = HeaderInfo(scenario="Priority SLA", engine="tiny · cpu · sdpa · paged", step=7, run_state="paused",
                      speed="4/s", running=3, waiting=4, finished=1, tokens_per_second=3800.0, notes=(note,))
    lines = StepHeader.text_for(info, width=78).plain.split("\n")
    assert len(lines) == 3 and lines[2] == note
    assert all(len(line) <= 78 for line in lines)
    assert len(StepHeader.text_for(info, width=200).plain.split("\n")) == 2  # room beside the counts


def test_history_counts_in_step_numbers_only():
    info = HeaderInfo(scenario="Mixed load", engine="tiny", step=6, run_state="paused", speed="4/s", newest=31)
    line1, line2 = StepHeader.text_for(info, width=78).plain.split("\n")
    assert line1.startswith("Step 6 of 31 paused")
    assert "/" not in line2.replace("tok/s", "") and "history: → newer" in line2 and len(line2) <= 78
    assert "Mixed load" in line1 or "Mixed load" in line2


def test_the_header_says_what_runs_before_the_title():
    info = HeaderInfo(scenario="Static vs continuous batching: why continuous batching wins", engine="tiny · cpu",
                      step=3, run_state="paused", speed="4/s", run="policy fcfs · variant continuous")
    line1 = StepHeader.text_for(info, width=78).plain.split("\n")[0]
    assert "policy fcfs · variant continuous" in line1[:78]


ENGINE = "random tiny · fp32 · cpu · sdpa · paged"


def test_at_80_columns_the_title_is_whole_where_the_second_line_has_room():
    """'Mixed l…' at 80 columns while the second line had twenty columns free."""
    info = HeaderInfo(scenario="Mixed load", engine=ENGINE, step=17, run_state="paused", speed="4/s", running=8,
                      finished=2, pending=2, tokens_per_second=4300.0, run="policy fcfs")
    line1, line2 = StepHeader.text_for(info, width=78).plain.split("\n")
    assert line1 == f"Step 17 paused  policy fcfs  {ENGINE}"
    assert line2.endswith("  Mixed load") and len(line2) <= 78
    # No room on the second line (history): the title goes before the engine label, which is cut instead.
    history = StepHeader.text_for(HeaderInfo(**{**info.__dict__, "newest": 18}), width=78).plain.split("\n")
    assert history[0].startswith("Step 17 of 18 paused  policy fcfs  Mixed load  random tiny")
    assert "history: → newer" in history[1] and all(len(line) <= 78 for line in history[1:])
    long = HeaderInfo(**{**info.__dict__, "scenario": "Static vs continuous batching", "run": "policy static"})
    line1 = StepHeader.text_for(long, width=78).plain.split("\n")[0]
    assert line1[:78].startswith("Step 17 paused  policy static  Static vs continuous batching  random")
    wide = StepHeader.text_for(info, width=200).plain.split("\n")
    assert wide[0] == f"Step 17 paused  policy fcfs  {ENGINE}  Mixed load"


def test_the_rate_says_what_it_counts():
    """The header's tok/s counts prefill and decode tokens; the metrics screen's counts output tokens."""
    info = HeaderInfo(scenario="Mixed load", engine="tiny", step=3, run_state="paused", speed="4/s",
                      tokens_per_second=4700.0)
    assert "4.7k total tok/s" in StepHeader.text_for(info, width=78).plain
