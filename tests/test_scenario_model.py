"""A scenario file meets the model that runs: with --model, token ids are checked against that model's
vocabulary (not the file's preset's 256 bytes), its text prompts go through its tokenizer, and a chat
prompt runs on the random presets too (as its plain text). A small random checkpoint with a vocabulary
of 384 stands in for a real model; nothing is downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from cbtui.cli import main
from scenarios import ScenarioError, load_scenario, loads

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
IDS = [300, 383, 7]  # 300 and 383: beyond a byte, within the checkpoint's 384
FILE = f'title = "Ids"\n[[requests]]\nprompt_tokens = {IDS}\nmax_new_tokens = 3\n' \
       '[[requests]]\nprompt = "Hello, world!"\nmax_new_tokens = 2\n'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_test_checkpoint", ROOT / "scripts" / "make_test_checkpoint.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    path = tmp_path_factory.mktemp("qwen2")
    maker.make_checkpoint(path, "qwen2", seed=1)
    return path


@pytest.fixture()
def scenario_file(tmp_path) -> Path:
    path = tmp_path / "ids.toml"
    path.write_text(FILE)
    return path


def test_token_ids_are_checked_against_the_model_that_runs(checkpoint, scenario_file):
    with pytest.raises(ScenarioError) as refused:  # the file's own model: tiny, 256 byte ids
        load_scenario(str(scenario_file))
    assert str(refused.value) == (f"{scenario_file}: [[requests]] #1 prompt_tokens: must be an integer from 0 to "
                                  f"255, got 300: model 'tiny' has a vocabulary of 256 (--model picks the model "
                                  f"whose ids these are)")
    scenario = load_scenario(str(scenario_file), model=str(checkpoint))
    engine = scenario.build_engine(model=str(checkpoint), device="cpu")
    assert engine.requests[0].prompt == IDS
    # the text prompt went through the checkpoint's tokenizer: fewer ids than bytes, some beyond a byte
    text = engine.requests[1].prompt
    assert len(text) < len("Hello, world!") and engine.tokenizer.decode(text) == "Hello, world!"
    while engine.has_unfinished():
        engine.step()
    assert len(engine.outputs()[0]) == 3


def test_an_id_beyond_the_checkpoints_vocabulary_names_the_request_and_the_size(checkpoint, tmp_path):
    text = FILE.replace("383", "384")
    with pytest.raises(ScenarioError, match=r"#1 prompt_tokens: must be an integer from 0 to 383, got 384: model "
                                            r"'qwen2\d*' has a vocabulary of 384"):
        loads(text, tmp_path / "s.toml", model=str(checkpoint))


def test_an_engine_built_for_another_model_than_the_one_checked_says_which_request(checkpoint, scenario_file):
    scenario = load_scenario(str(scenario_file), model=str(checkpoint))
    with pytest.raises(ScenarioError) as refused:  # the file's tiny after all: the engine's own check
        scenario.build_engine(device="cpu")
    message = str(refused.value)
    assert message.startswith(f"{scenario_file}: request #1 of the workload: prompt token 300 is out of range")
    assert "a vocabulary of 256" in message and "\n" not in message


def test_model_bounds_of_the_engine_table_follow_the_model_that_runs(checkpoint, tmp_path):
    text = '[engine]\neos_token_id = 300\n[[requests]]\nprompt = "hi"\ntop_k = 380\n'
    with pytest.raises(ScenarioError, match="eos_token_id: must be an integer from 0 to 255"):
        loads(text, tmp_path / "s.toml")
    assert loads(text, tmp_path / "s.toml", model=str(checkpoint)).requests[0]["top_k"] == 380


def test_the_command_line_runs_the_file_on_the_model_it_names(checkpoint, scenario_file):
    default = CliRunner().invoke(main, ["scenario", str(scenario_file), "--headless"])
    assert default.exit_code == 2 and default.stderr.count("\n") == 1 and "vocabulary of 256" in default.stderr
    ran = CliRunner().invoke(main, ["scenario", str(scenario_file), "--headless", "--model", str(checkpoint),
                                    "--device", "cpu"])
    assert ran.exit_code == 0, ran.output
    assert f"model={checkpoint.name}" in ran.stdout and "summary:" in ran.stdout
    too_big = scenario_file.with_name("big.toml")
    too_big.write_text(FILE.replace("383", "50000"))
    refused = CliRunner().invoke(main, ["scenario", str(too_big), "--headless", "--model", str(checkpoint)])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert "got 50000" in refused.stderr and "a vocabulary of 384" in refused.stderr


def test_a_bad_model_on_the_command_line_is_one_line_before_anything_runs(tmp_path, scenario_file):
    result = CliRunner().invoke(main, ["scenario", str(scenario_file), "--headless", "--model",
                                       str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"cbtui: error: {tmp_path / 'nowhere'}: no such directory")


def test_a_chat_prompt_on_a_preset_is_its_text(tmp_path):
    scenario = loads('[[requests]]\nprompt = "Hi there"\nchat = true\nmax_new_tokens = 2\n', tmp_path / "s.toml")
    engine = scenario.build_engine(device="cpu")
    assert engine.requests[0].prompt == list(b"Hi there")


def test_a_file_may_name_a_packaged_model_or_a_hub_name(tmp_path, monkeypatch):
    """Not mistaken for a missing directory beside the file: each is resolved as --model resolves it."""
    import huggingface_hub.constants

    monkeypatch.setenv("CBTUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ScenarioError, match=r"\[engine\] model: model 'smollm2' is not pulled yet .*cbtui pull "
                                            r"smollm2"):
        loads('[engine]\nmodel = "smollm2"\n[[requests]]\nprompt = "hi"\n', tmp_path / "s.toml")
    with pytest.raises(ScenarioError, match=r"\[engine\] model: someorg/somemodel: not in the Hugging Face cache"):
        loads('[engine]\nmodel = "someorg/somemodel"\n[[requests]]\nprompt = "hi"\n', tmp_path / "s.toml")


def test_the_chat_scenario_runs_on_the_presets():
    """Six chat prompts, for CI on the random presets: their text as bytes, the run as any other."""
    scenario = load_scenario("chat")
    assert len(scenario.requests) == 6 and all(r.get("chat") for r in scenario.requests)
    engine = scenario.build_engine(device="cpu")
    assert engine.requests[0].prompt == list(b"What is the capital of France?")


@pytest.mark.slow
def test_the_chat_scenario_gives_real_answers_on_smollm2(monkeypatch):
    from engine.models.packaged import is_pulled, packaged_path

    monkeypatch.delenv("CBTUI_CACHE_DIR", raising=False)  # the default cache, where `cbtui pull` puts it
    if not is_pulled("smollm2"):
        pytest.skip(f"smollm2 is not pulled ({packaged_path('smollm2')}); run `cbtui pull smollm2`")
    scenario = load_scenario("chat", model="smollm2")
    engine = scenario.build_engine(model="smollm2", device="cpu", dtype="float32")
    records = []
    while engine.has_unfinished():
        records.append(engine.step())
    answers = {rid: engine.tokenizer.decode(tokens) for rid, tokens in engine.outputs().items()}
    assert "Paris" in answers[0] and answers[0].endswith("<|im_end|>"), answers[0]  # stopped at end of turn
    assert len(engine.outputs()[0]) < scenario.requests[0]["max_new_tokens"]
    assert "84" in answers[4] or "Hola" in answers[5] or "Buenos" in answers[5], answers
    tails = {v.id: v.output_text for rec in records for v in rec.requests if v.output_text}
    assert "Paris" in tails[0]  # what the Requests panel's output tail shows
