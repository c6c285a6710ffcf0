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


def test_random_weights_say_their_outputs_are_noise_and_how_to_run_a_real_model():
    """The longest wording that fits after everything else, never a row of its own (at 80x24 every row
    is a panel's)."""
    from cbtui.widgets.header import NOISE_HINTS

    info = HeaderInfo(scenario="Mixed load", engine="random tiny · fp32 · cpu · sdpa · paged", step=5,
                      run_state="paused", speed="4/s", running=6, pending=6, tokens_per_second=3500.0,
                      random_weights=True)
    assert NOISE_HINTS[0] == "random weights: outputs are noise; --model smollm2 runs a real model"
    # After the run's title (which takes the second line's room first): the longest wording that fits.
    for width, hint in ((100, "try --model smollm2"), (160, NOISE_HINTS[0])):
        lines = StepHeader.text_for(info, width=width).plain.split("\n")
        assert len(lines) == 2 and lines[1].endswith("  " + hint) and all(len(x) <= width for x in lines), lines
    lines = StepHeader.text_for(info, width=76).plain.split("\n")  # no room left: the label's "random" says it
    assert len(lines) == 2 and "smollm2" not in lines[1] and lines[0].startswith("Step 5 paused  random tiny")
    crowded = HeaderInfo(**{**info.__dict__, "running": 16, "finished": 120, "preempted": 3})
    assert StepHeader.text_for(crowded, width=76).plain.split("\n")[1].endswith("tok/s")  # no room: none
    noted = HeaderInfo(**{**info.__dict__, "notes": ("8 tokens reserved for 2 high-priority",)})
    lines = StepHeader.text_for(noted, width=76).plain.split("\n")  # a plugin's note first, on its own line
    assert lines[2] == "8 tokens reserved for 2 high-priority  try --model smollm2"
    real = HeaderInfo(**{**info.__dict__, "random_weights": False, "engine": "SmolLM2-135M-Instruct · fp32"})
    assert "smollm2" not in StepHeader.text_for(real, width=160).plain


def test_the_run_header_knows_random_weights_from_a_checkpoints():
    from engine.records import RunHeader

    common = dict(device="cpu", dtype="float32", attention="sdpa", kv_layout="paged", policy="fcfs",
                  max_tokens_per_step=48, prefill_chunk_size=16, block_size=8, num_blocks=96)
    assert RunHeader(model="tiny", **common).random_weights
    real = RunHeader(model="SmolLM2-135M-Instruct (Q4_1)", checkpoint="/cache/converted/smollm2", **common)
    assert not real.random_weights and real.label().startswith("SmolLM2-135M-Instruct (Q4_1) · fp32")
    assert not RunHeader(model="", **common).random_weights  # a recording that names no model


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
