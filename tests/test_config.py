"""EngineConfig nested by concern: each section checks itself, one function checks what sections must
agree on, flat keys and sections build the same config, and the command line and the scenario
loader take what each setting accepts from its field's metadata."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType

import click
import pytest
from click.testing import CliRunner

from cbtui.cli import main
from cbtui.engine_options import engine_option, flag_of
from engine.config import (
    FLAT,
    SECTIONS,
    CacheConfig,
    EngineConfig,
    ModelConfig,
    ParallelConfig,
    RunnerConfig,
    SchedulerConfig,
    SpeculativeConfig,
    setting_for,
)
from engine.config.scope import SCOPES, takes_effect
from scenarios import ScenarioError, loads
from scenarios.workload import MAX_REQUESTS

REQUEST = "[[requests]]\nprompt_len = 8\nmax_new_tokens = 2\n"


# -- each section checks itself ----------------------------------------------------------------

@pytest.mark.parametrize("build, words", [
    (lambda: ModelConfig(device="tpu"), "device='tpu' is not allowed; choose one of: auto, cpu, cuda"),
    (lambda: ModelConfig(seed=-1), "seed=-1 is out of range; it must be in 0..4294967295"),
    (lambda: ModelConfig(ignore_eos="yes"), "ignore_eos='yes' must be true or false"),
    (lambda: ModelConfig(name=""), "model='' must be a preset"),
    (lambda: SchedulerConfig(max_tokens_per_step=0), "max_tokens_per_step=0 is out of range; it must be >= 1"),
    (lambda: SchedulerConfig(max_decode_per_step="2"), "max_decode_per_step='2' must be an integer >= 1 or None"),
    (lambda: SchedulerConfig(policy="lifo"), "policy='lifo' is not allowed"),
    (lambda: CacheConfig(kv_layout="ring"), "kv_layout='ring' is not allowed"),
    (lambda: CacheConfig(kv_memory_bytes=4096, num_blocks=8), "both size the KV pool; give one of them"),
    (lambda: CacheConfig(kv_memory_bytes=4096, kv_layout="dense"), "set kv_layout='paged' or drop kv_memory_bytes"),
    (lambda: CacheConfig(prefix_caching=True, kv_layout="dense"), "prefix_caching=True needs kv_layout='paged'"),
    (lambda: CacheConfig(prefix_caching="yes"), "prefix_caching='yes' must be true, false or None (auto)"),
    (lambda: CacheConfig(contiguous_up_to=8, kv_layout="dense"), "contiguous_up_to=8 reserves runs of blocks"),
    (lambda: CacheConfig(contiguous_up_to=8, prefix_caching=True), "contiguous_up_to=8 does not share prefix"),
    (lambda: RunnerConfig(decode_graphs="yes"), "decode_graphs='yes' is not allowed"),
    (lambda: RunnerConfig(overlap_steps=1), "overlap_steps=1 must be true or false"),
    (lambda: SpeculativeConfig("eagle"), "speculative='eagle' is not allowed; choose one of: None (or 'off')"),
    (lambda: SpeculativeConfig("ngram", num_speculative_tokens=17), "num_speculative_tokens=17 is out of range"),
    (lambda: SpeculativeConfig("draft", draft_model="huge"), "draft_model='huge' is not allowed"),
    (lambda: ParallelConfig(65), "shards=65 is out of range; it must be in 1..64"),
    (lambda: ParallelConfig(2, shard_timeout_s=0.1), "shard_timeout_s=0.1 must be a number of seconds in 0.5..3600"),
    (lambda: ParallelConfig(2, shard_by="layers"), "shard_by='layers' is not allowed"),
])
def test_each_section_refuses_a_bad_field_in_one_line(build, words):
    with pytest.raises(ValueError) as err:
        build()
    assert words in str(err.value) and "\n" not in str(err.value)


def test_sections_are_frozen_once_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SchedulerConfig().max_tokens_per_step = 0  # type: ignore[misc]  # the misuse under test
    with pytest.raises(dataclasses.FrozenInstanceError):
        EngineConfig().cache = CacheConfig()  # type: ignore[misc]


# -- flat and nested build the same config -----------------------------------------------------

def test_flat_keys_sections_and_dicts_build_equal_configs():
    flat = EngineConfig(model="small", max_tokens_per_step=96, kv_layout="dense", attention="sdpa",
                        speculative="draft", draft_model="tiny", seed=3)
    nested = EngineConfig(llm=ModelConfig(name="small", seed=3), scheduler=SchedulerConfig(max_tokens_per_step=96),
                          cache=CacheConfig(kv_layout="dense"), runner=RunnerConfig(attention="sdpa"),
                          speculation=SpeculativeConfig("draft", draft_model="tiny"))
    as_dicts = EngineConfig(llm={"name": "small", "seed": 3}, scheduler={"max_tokens_per_step": 96},
                            cache={"kv_layout": "dense"}, runner={"attention": "sdpa"},
                            speculation={"method": "draft", "draft_model": "tiny"})
    assert flat == nested == as_dicts
    assert flat.parallel is None and flat.speculation == SpeculativeConfig("draft", 4, "tiny")
    assert EngineConfig(**flat.to_flat()) == flat
    assert EngineConfig(**json.loads(json.dumps(dataclasses.asdict(flat)))) == flat  # how shard workers get it
    sharded = EngineConfig(shards=2, shard_by="sequence")
    assert sharded == EngineConfig(parallel=ParallelConfig(2, "sequence"))
    assert EngineConfig(**json.loads(json.dumps(dataclasses.asdict(sharded)))) == sharded


def test_flat_keys_override_a_given_section_as_replace_needs():
    base = EngineConfig(kv_layout="dense", speculative="ngram", shards=1)
    assert dataclasses.replace(base, kv_layout="paged").cache == CacheConfig()
    assert dataclasses.replace(base, speculative="off").speculation is None
    assert dataclasses.replace(base, num_speculative_tokens=2).speculation == SpeculativeConfig("ngram", 2)
    assert EngineConfig(cache=CacheConfig(block_size=8), num_blocks=4).cache == CacheConfig(block_size=8, num_blocks=4)


def test_a_switched_off_section_is_none_and_its_fields_still_have_to_be_valid():
    for off in (dict(speculative=None), dict(speculative="off"), dict(speculation=SpeculativeConfig("off")),
                dict(num_speculative_tokens=2)):
        assert EngineConfig(**off).speculation is None, off
    for off in (dict(shards=1), dict(shard_by="sequence"), dict(parallel=ParallelConfig(1, "sequence"))):
        assert EngineConfig(**off) == EngineConfig(), off
    with pytest.raises(ValueError, match="shard_by='layers' is not allowed"):
        EngineConfig(shard_by="layers")
    with pytest.raises(ValueError, match="num_speculative_tokens=0 is out of range"):
        EngineConfig(num_speculative_tokens=0)


def test_a_setting_is_read_from_its_section_and_by_its_flat_name_through_value():
    """Every reader takes its section (config.scheduler.max_tokens_per_step); a flat name is for
    files, the command line and tables (value, to_flat), not an attribute."""
    config = EngineConfig(max_tokens_per_step=96, kv_layout="dense")
    assert config.scheduler.max_tokens_per_step == config.value("max_tokens_per_step") == 96
    assert config.llm.name == config.value("model") == "tiny" and config.cache.kv_layout == "dense"
    assert config.speculation is None and config.value("num_speculative_tokens") == 4
    assert config.parallel is None and config.value("shards") == 1 and config.value("shard_by") == "heads"
    assert config.to_flat()["max_tokens_per_step"] == 96 and list(config.to_flat()) == EngineConfig.field_names()
    for name in ("max_tokens_per_step", "model", "shards"):
        with pytest.raises(AttributeError):
            getattr(config, name)


def test_every_flat_name_belongs_to_exactly_one_section_field():
    names = EngineConfig.field_names()
    assert len(names) == len(set(names)) == 28
    per_section = sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())
    assert per_section == len(FLAT) == 28
    assert not set(names) & set(SECTIONS), "a flat name must not hide a section"


def test_an_unknown_key_names_the_closest_setting():
    with pytest.raises(ValueError, match="max_token_per_step=8 is not an engine setting; did you mean "
                                         "max_tokens_per_step?"):
        EngineConfig(max_token_per_step=8)
    with pytest.raises(ValueError, match="cache.kv_layot='dense' is not a cache setting; did you mean cache.kv_layout"):
        EngineConfig(cache={"kv_layot": "dense"})
    with pytest.raises(ValueError, match="scheduler=3 must be a SchedulerConfig"):
        EngineConfig(scheduler=3)  # type: ignore[arg-type]  # the misuse under test


# -- the combinations across sections ----------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    (dict(contiguous_up_to=8, speculative="ngram"), "contiguous_up_to=8 does not verify drafts; use speculative=None"),
    (dict(contiguous_up_to=8, shards=2), "contiguous_up_to=8 runs on one device; use shards=1"),
    (dict(shards=2, kv_layout="dense"), "shards=2 needs kv_layout='paged' (blocks are what the shards hold)"),
    (dict(shards=2, overlap_steps=True), "shards=2 cannot overlap steps; use overlap_steps=False or shards=1"),
    (dict(shards=2, decode_graphs="on"), "shards=2 runs decodes eagerly (a collective per layer)"),
    (dict(shards=2, prefix_caching=True), "shards=2 does not share prefix blocks yet"),
    (dict(shards=2, speculative="ngram"), "shards=2 does not verify drafts yet; use speculative=None or shards=1"),
    (dict(overlap_steps=True, eos_token_id=3), "overlap_steps=True needs eos_token_id=None"),
    (dict(overlap_steps=True, speculative="ngram"), "speculative decoding needs each step's tokens on the host"),
    (dict(decode_graphs="on", kv_layout="dense"), "decode_graphs='on' needs kv_layout='paged' and attention"),
    (dict(decode_graphs="on", attention="reference"), "decode_graphs='on' needs kv_layout='paged' and attention"),
])
def test_each_combination_is_refused_with_its_message(settings, message):
    with pytest.raises(ValueError) as err:
        EngineConfig(**settings)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_caches_prefixes_resolves_none_across_sections():
    assert EngineConfig().caches_prefixes
    assert not EngineConfig(kv_layout="dense").caches_prefixes
    assert not EngineConfig(shards=2).caches_prefixes and not EngineConfig(contiguous_up_to=8).caches_prefixes
    assert not EngineConfig(prefix_caching=False).caches_prefixes


# -- which setting takes effect follows from the nesting -----------------------------------------

def test_scopes_follow_the_sections_and_only_if():
    assert set(SCOPES) == {"num_speculative_tokens", "draft_model", "shard_by", "shard_timeout_s",
                           "static_batch_size", "block_size", "num_blocks", "kv_memory_bytes", "prefix_caching",
                           "dense_max_tokens"}
    assert takes_effect(EngineConfig(), "speculative") and takes_effect(EngineConfig(), "shards")  # the switches
    assert not takes_effect(EngineConfig(), "num_speculative_tokens")
    assert takes_effect(EngineConfig(speculative="ngram"), "num_speculative_tokens")
    assert not takes_effect(EngineConfig(speculative="ngram"), "draft_model")
    assert takes_effect(EngineConfig(policy="static"), "static_batch_size")


# -- the command line and the loader read the metadata -------------------------------------------

def test_the_cli_options_are_the_settings_metadata():
    params = {p.name: p for p in main.commands["scenario"].params}
    for name in ("device", "attention", "kv_layout", "speculative", "shard_by"):
        assert list(params[name].type.choices) == list(setting_for(name).choices), name
        assert params[name].opts == [flag_of(name)] and params[name].help == setting_for(name).help
    assert (params["shards"].type.min, params["shards"].type.max) == (1, setting_for("shards").limit)
    assert params["prefix_caching"].opts == ["--no-prefix-caching"]
    assert params["contiguous_up_to"].type.min == 0 and params["model"].metavar == "MODEL"
    assert setting_for("static_batch_size").limit == MAX_REQUESTS  # a static batch no bigger than a workload


@pytest.fixture
def extra_attention_choice(monkeypatch):
    """attention's metadata with one more choice, in its field: the one place it is written."""
    spec = FLAT["attention"].spec
    more = dataclasses.replace(setting_for("attention"), choices=(*setting_for("attention").choices, "magic"))
    monkeypatch.setattr(spec, "metadata", MappingProxyType({"setting": more}))


def test_a_choice_added_to_the_metadata_reaches_help_loader_and_config(extra_attention_choice):
    command = click.command()(engine_option("attention")(lambda attention: click.echo(attention)))
    assert "magic" in CliRunner().invoke(command, ["--help"]).output
    assert CliRunner().invoke(command, ["--attention", "magic"]).output == "magic\n"
    scenario = loads('[engine]\nattention = "magic"\n' + REQUEST, "m.toml")
    assert scenario.engine_config().runner.attention == "magic"


def test_without_the_choice_the_loader_refuses_it_with_did_you_mean():
    with pytest.raises(ScenarioError, match=r"\[engine\] attention: 'sdap' is not allowed \(did you mean 'sdpa'\?\)"):
        loads('[engine]\nattention = "sdap"\n' + REQUEST, "m.toml")
    with pytest.raises(ScenarioError, match=r"\[engine\] decode_graphs: 'yes' is not allowed; choose one of"):
        loads('[engine]\ndecode_graphs = "yes"\n' + REQUEST, "m.toml")  # every field with choices, not a list
    with pytest.raises(ScenarioError, match=r"\[engine\] shards: must be an integer from 1 to 8, got 9"):
        loads("[engine]\nshards = 9\n" + REQUEST, "m.toml")  # the metadata's limit, stricter than the engine's 64


def test_scenario_sub_tables_are_sections():
    flat = loads('[engine]\nkv_layout = "dense"\nmax_tokens_per_step = 32\n[compare.wide]\nmax_tokens_per_step = 64\n'
                 + REQUEST, "f.toml")
    nested = loads('[engine.cache]\nkv_layout = "dense"\n[engine.scheduler]\nmax_tokens_per_step = 32\n'
                   '[compare.wide.scheduler]\nmax_tokens_per_step = 64\n' + REQUEST, "n.toml")
    assert flat.engine == nested.engine and flat.variants == nested.variants
    assert flat.engine_config("wide") == nested.engine_config("wide")
    assert nested.engine_config("wide").scheduler.max_tokens_per_step == 64
    with pytest.raises(ScenarioError, match=r"\[engine.cache\] kv_layot: unknown key; did you mean 'kv_layout'\?"):
        loads('[engine.cache]\nkv_layot = "dense"\n' + REQUEST, "n.toml")
    with pytest.raises(ScenarioError, match=r"kv_layout: is given twice, here and as kv_layout in \[engine.cache\]"):
        loads('[engine]\nkv_layout = "paged"\n[engine.cache]\nkv_layout = "dense"\n' + REQUEST, "n.toml")
    with pytest.raises(ScenarioError, match=r"\[engine\] cache: must be a table"):
        loads("[engine]\ncache = 3\n" + REQUEST, "n.toml")
    with pytest.raises(ScenarioError, match=r"\[engine\] max_token_per_step: unknown key; did you mean "
                                            r"'max_tokens_per_step'\?"):
        loads("[engine]\nmax_token_per_step = 3\n" + REQUEST, "n.toml")
