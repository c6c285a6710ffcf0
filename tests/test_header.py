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


def test_the_header_says_what_runs_before_the_title():
    info = HeaderInfo(scenario="Static vs continuous batching: why continuous batching wins", engine="tiny · cpu",
                      step=3, run_state="paused", speed="4/s", run="policy fcfs · variant continuous")
    line1 = StepHeader.text_for(info, width=78).plain.split("\n")[0]
    assert "policy fcfs · variant continuous" in line1[:78]
