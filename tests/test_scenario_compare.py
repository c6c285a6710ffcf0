"""[compare] variants, their summaries from StepRecords, and the CLI around scenarios."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cbtui.cli import main
from engine.records.summary import format_table, summarize
from scenarios import builtin_names, load_scenario, loads
from scenarios.compare import compare, run_records, settings_label

SMALL = """title = "Small"
[engine]
max_tokens_per_step = 8
prefill_chunk_size = 8
block_size = 4
num_blocks = 16
[[requests]]
prompt_len = 10
max_new_tokens = 3
[[requests]]
prompt = "hi"
max_new_tokens = 2
arrival_step = 1
[compare.wide]
max_tokens_per_step = 32
prefill_chunk_size = 32
"""



def test_summary_counts_from_records():
    s = loads(SMALL, "small.toml")
    row = summarize(run_records(s))
    # Step 0: 8 prompt tokens of request 0. Step 1: its last 2 and request 1's 2 (both sample).
    # Steps 2-3: two decodes, then one; request 1 is done after 2 tokens, request 0 after 3.
    assert row.complete and row.steps == 4
    assert row.processed == 10 + 2 + 2 + 1 and row.generated == 5 and row.recomputed == 0
    assert (row.ttft_min, row.ttft_max) == (0, 1) and row.ttft_mean == 0.5
    assert row.latency_mean == (3 + 1) / 2
    assert row.peak_batch == 8 and row.preemptions == 0 and row.padding_slot_steps == 0
    assert row.peak_kv_slots == 12 + 4  # 3 blocks of 4 for request 0, 1 for request 1
    assert row.kv_bytes_peak == 16 * 4 * run_records(s)[0].kv.bytes_per_token


def test_compare_rows_and_table():
    s = loads(SMALL, "small.toml")
    rows = compare(s)
    assert [r.label for r in rows] == ["(scenario)", "wide"]
    assert [r.settings for r in rows] == ["max_tokens_per_step=8 prefill_chunk_size=8",
                                          "max_tokens_per_step=32 prefill_chunk_size=32"]
    assert (rows[0].steps, rows[1].steps) == (4, 3)
    lines = format_table(rows)
    assert len(lines) == 3 and lines[0].split()[:3] == ["run", "settings", "steps"]
    assert lines[2].split()[:4] == ["wide", "max_tokens_per_step=32", "prefill_chunk_size=32", "3"]


def test_table_notes_an_unfinished_run():
    s = loads(SMALL, "small.toml")
    lines = format_table([summarize(run_records(s, max_steps=2), "cut")])
    assert lines[-1] == "note: cut stopped after 2 steps with requests unfinished"


def test_cli_overrides_apply_to_variants_but_variant_keys_win():
    s = loads(SMALL, "small.toml")
    assert settings_label(s, "wide", max_tokens_per_step=4) == "max_tokens_per_step=32 prefill_chunk_size=32"
    assert settings_label(s, None, max_tokens_per_step=4) == "max_tokens_per_step=4 prefill_chunk_size=8"
    assert s.engine_config("wide", kv_layout="dense").kv_layout == "dense"


# -- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["scenarios"], ["scenario", "--list"]])
def test_listing_shows_every_builtin_with_its_summary(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == len(builtin_names())
    for line, name in zip(lines, builtin_names(), strict=True):
        assert line.split()[0] == name
        assert line[22:].strip() == load_scenario(name).summary


def test_headless_prints_question_and_comparison():
    result = CliRunner().invoke(main, ["scenario", "long_prompt", "--headless"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Question: How does prefill chunk size affect latency?" in out
    table = out[out.index("comparison (steps"):].split("\n\n")[0].splitlines()[1:]  # its first part (80 columns)
    assert [line.split()[0] for line in table] == ["run", "(scenario)", "chunk_32", "chunk_16"]
    summary_steps = int(out.split("summary: ")[1].split()[0])
    assert table[1].split()[2] == str(summary_steps)  # the scenario row is the run just shown


def test_headless_steps_limit_skips_the_comparison():
    result = CliRunner().invoke(main, ["scenario", "long_prompt", "--headless", "--steps", "2"])
    assert result.exit_code == 0
    assert "comparison skipped" in result.output and "chunk_16" not in result.output


def test_variant_runs_instead_of_the_scenario():
    result = CliRunner().invoke(main, ["scenario", "static_vs_continuous", "--headless", "--variant",
                                       "continuous"])
    assert result.exit_code == 0
    assert "Static vs continuous batching (variant continuous)" in result.output and "comparison" not in result.output
    expected = summarize(run_records(load_scenario("static_vs_continuous"), "continuous")).steps
    assert f"summary: {expected} steps" in result.output
