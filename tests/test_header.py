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
