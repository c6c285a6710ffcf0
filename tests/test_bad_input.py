"""Bad input: a ValueError naming the field and what is allowed, before anything runs."""

import subprocess
import sys

import pytest

from engine import Engine, EngineConfig


@pytest.mark.parametrize("field, value, words", [
    ("max_tokens_per_step", 0, ">= 1"),
    ("prefill_chunk_size", 0, ">= 1"),
    ("block_size", 0, ">= 1"),
    ("num_blocks", 0, ">= 1"),
    ("max_decode_per_step", 0, ">= 1"),
    ("static_batch_size", 0, ">= 1"),
    ("max_tokens_per_step", "8", "integer"),
    ("model", "huge", "tiny, micro, small"),
    ("attention", "magic", "reference"),
    ("kv_layout", "ring", "paged, dense"),
    ("policy", "lifo", "fcfs, static"),
    ("dtype", "int8", "float32"),
    ("device", "tpu", "cpu"),
    ("seed", 2**62, "0..4294967295"),
    ("shards", 0, "1..64"),
    ("shard_by", "layers", "heads, sequence"),
    ("shard_timeout_s", 0, "0.5..3600"),
])
def test_config_rejects(field, value, words):
    with pytest.raises(ValueError) as err:
        EngineConfig(**{field: value})
    assert field in str(err.value) and words in str(err.value)


@pytest.fixture(scope="module")
def engine():
    return Engine(EngineConfig(model="tiny", device="cpu", block_size=16, num_blocks=4))


@pytest.mark.parametrize("kwargs, words", [
    (dict(prompt=[], max_new_tokens=4), "prompt is empty"),
    (dict(prompt="", max_new_tokens=4), "prompt is empty"),
    (dict(prompt=[1, 2], max_new_tokens=0), "max_new_tokens"),
    (dict(prompt=[1, 2], max_new_tokens=2, arrival_step=-1), "arrival_step"),
    (dict(prompt=[1, 999], max_new_tokens=2), "0..255"),
    (dict(prompt=[1] * 4000, max_new_tokens=200), "exceeds the context"),
    (dict(prompt=[1] * 60, max_new_tokens=10), "num_blocks=4 is too small"),
    (dict(prompt=[1], max_new_tokens=1, temperature=-1.0), "temperature"),
    (dict(prompt=[1], max_new_tokens=1, temperature=float("nan")), "temperature"),
    (dict(prompt=[1], max_new_tokens=1, temperature=1e-221), "temperature"),
    (dict(prompt=[1], max_new_tokens=1, temperature=1.0, seed=-3), "seed"),
])
def test_add_request_rejects(engine, kwargs, words):
    with pytest.raises(ValueError, match=words):
        engine.add_request(**kwargs)
    assert not engine.has_unfinished(), "a rejected request must not be queued"


def test_duplicate_request_id_rejected():
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    eng.add_request([1], max_new_tokens=1, request_id=5)
    with pytest.raises(ValueError, match="already used"):
        eng.add_request([2], max_new_tokens=1, request_id=5)


def test_cuda_requested_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: device='cuda' is valid here")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Engine(EngineConfig(device="cuda"))


def test_an_error_names_the_flag_that_set_the_value_not_the_file(tmp_path):
    """--device cuda on a machine without a GPU: the file never said cuda, so the message must not
    blame its [engine] table; a value the file set is still blamed on the file."""
    import torch

    from scenarios import ScenarioError, load_scenario

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: device='cuda' is valid here")
    with pytest.raises(ScenarioError) as raised:
        load_scenario("mixed_load").build_engine(device="cuda")
    assert str(raised.value).startswith("--device cuda: device='cuda' but no CUDA GPU is visible")
    path = tmp_path / "mine.toml"
    path.write_text('title = "t"\n[engine]\ndevice = "cuda"\n[[requests]]\nprompt = "hi"\n')
    with pytest.raises(ScenarioError) as raised:
        load_scenario(str(path)).build_engine()
    assert str(raised.value).startswith(f"{path}: [engine] device='cuda'")
    with pytest.raises(ScenarioError) as raised:  # the flag overrides the file: the flag is named
        load_scenario(str(path)).build_engine(device="cuda")
    assert str(raised.value).startswith("--device cuda: ")
    path.write_text('title = "t"\n[[requests]]\nprompt = "hi"\n[compare.gpu]\ndevice = "cuda"\n')
    with pytest.raises(ScenarioError) as raised:  # a variant overrides both
        load_scenario(str(path)).build_engine("gpu", device="cpu")
    assert str(raised.value).startswith(f"{path}: [compare] gpu: device='cuda'")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_unknown_scenario_lists_known_ones():
    res = cli("scenario", "no_such_thing", "--headless")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown scenario 'no_such_thing'" in lines[0] and "mixed_load" in lines[0]


def test_cli_bad_override_is_one_line_exit_2():
    res = cli("scenario", "mixed_load", "--headless", "--attention", "warp")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "'warp' is not one of" in res.stderr


def test_cli_shards_that_cannot_divide_the_heads_are_one_line_exit_2():
    res = cli("scenario", "sharded_kv", "--headless", "--shards", "4", "--shard-by", "heads")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "shards=4 with shard_by='heads'" in lines[0] and "2 KV heads" in lines[0], res.stderr


def test_cli_unknown_plugin_names_the_option_not_the_scenario_file():
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "mixed_load", "--headless", "--plugin", "nosuch"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("cbtui: error: --plugin nosuch: unknown plugin 'nosuch'")
    assert res.stderr.count("\n") == 1
    assert ".toml" not in res.stderr
