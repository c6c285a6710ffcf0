"""[compare] variants, their summaries from StepRecords, and the CLI around scenarios."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cbtui.cli import main
from engine import EngineConfig
from engine.config.scope import SCOPES, takes_effect
from engine.records.summary import format_table, summarize
from scenarios import builtin_names, load_scenario, loads
from scenarios.compare import compare, run_records, settings_label
from scenarios.variant_pair import variant

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
    assert s.engine_config("wide", kv_layout="dense").cache.kv_layout == "dense"



def test_a_setting_that_changes_nothing_in_a_run_is_not_in_its_label():
    """sharded_kv sets shard_by=sequence for every run, but one_device runs one shard: shard_by changes
    nothing there, so neither its table row nor its compare pane lists it. Likewise draft_model
    where no draft model proposes."""
    sharded = load_scenario("sharded_kv")
    assert settings_label(sharded, "one_device") == "shards=1 num_blocks=48"
    assert settings_label(sharded, "heads") == "shards=2 num_blocks=48 shard_by=heads"
    assert settings_label(sharded, None) == "shards=2 num_blocks=24 shard_by=sequence"
    assert variant(sharded, "one_device").settings() == "shards=1 num_blocks=48"
    speculative = load_scenario("speculative")
    assert settings_label(speculative, None) == "speculative=ngram"
    assert settings_label(speculative, "no_speculation") == "speculative=None"
    assert settings_label(speculative, "draft") == "speculative=draft draft_model=micro"


def test_every_scoped_setting_is_an_engine_setting_and_leaves_its_scope():
    """A renamed EngineConfig field would leave its scope rule silently unused."""
    assert set(SCOPES) <= set(EngineConfig.field_names())
    outside = {"shard_by": dict(shards=1), "shard_timeout_s": dict(shards=1), "num_speculative_tokens": {},
               "draft_model": dict(speculative="ngram"), "static_batch_size": dict(policy="fcfs"),
               "block_size": dict(kv_layout="dense"), "num_blocks": dict(kv_layout="dense"),
               "kv_memory_bytes": dict(kv_layout="dense"), "prefix_caching": dict(kv_layout="dense"),
               "dense_max_tokens": dict(kv_layout="paged")}
    assert set(outside) == set(SCOPES)
    for name, settings in outside.items():
        assert not takes_effect(EngineConfig(**settings), name), name
    assert takes_effect(EngineConfig(shards=2, shard_by="sequence"), "shard_by")
    assert takes_effect(EngineConfig(speculative="draft"), "draft_model")
    assert takes_effect(EngineConfig(), "max_tokens_per_step")  # a setting with no scope always takes effect


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
