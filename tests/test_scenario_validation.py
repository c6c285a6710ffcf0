"""A bad scenario gives one ScenarioError line naming the file, the key and what is allowed.

The CLI turns it into `cbtui: error: ...` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cbtui.cli import main
from scenarios import ScenarioError, load_scenario, loads

REPO = Path(__file__).resolve().parents[1]
OK_REQUEST = '[[requests]]\nprompt = "hello"\n'



def error_for(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(str(path)).build_engine()
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# (TOML text, fragments the message must contain: the key, the problem, what is allowed)
CASES = {
    "unknown top-level key": ('titel = "x"\n' + OK_REQUEST, ["titel", "unknown key", "did you mean 'title'",
                                                             "allowed keys"]),
    "unknown engine key": ("[engine]\nmax_token_per_step = 8\n" + OK_REQUEST,
                           ["[engine] max_token_per_step", "did you mean 'max_tokens_per_step'"]),
    "unknown request key": ('[[requests]]\nprompt = "hi"\nmax_new_token = 4\n',
                            ["[[requests]] #1 max_new_token", "did you mean 'max_new_tokens'"]),
    "unknown generator key": ("[[generators]]\ncount = 2\narival = 'uniform'\n",
                              ["[[generators]] #1 arival", "did you mean 'arrival'"]),
    "engine setting of the wrong type": ('[engine]\nmax_tokens_per_step = "64"\n' + OK_REQUEST,
                                         ["[engine] max_tokens_per_step", "must be an integer from 1 to",
                                          "got a string '64'"]),
    "engine choice misspelt": ('[engine]\nkv_layout = "pagd"\n' + OK_REQUEST,
                               ["[engine] kv_layout", "did you mean 'paged'", "'dense'"]),
    "engine number out of range": ("[engine]\nprefill_chunk_size = 0\n" + OK_REQUEST,
                                   ["[engine] prefill_chunk_size", "from 1 to 1048576, got 0"]),
    "engine pool too big": ("[engine]\nnum_blocks = 1000000\nblock_size = 16\n" + OK_REQUEST,
                            ["[engine] num_blocks", "at most 1048576"]),
    "engine seed too big": ("[engine]\nseed = 99999999999\n" + OK_REQUEST, ["[engine] seed", "0 to 4294967295"]),
    "eos beyond the vocabulary": ("[engine]\neos_token_id = 256\n" + OK_REQUEST, ["eos_token_id", "0 to 255"]),
    "engine not a table": ("engine = 5\n" + OK_REQUEST, ["engine", "must be a table, got an integer"]),
    "title not a string": ("title = 3\n" + OK_REQUEST, ["title", "must be a string, got an integer"]),
    "requests not an array of tables": ("requests = 3\n", ["requests", "array of tables", "[[requests]]"]),
    "max_new_tokens float": ('[[requests]]\nprompt = "hi"\nmax_new_tokens = 4.5\n',
                             ["max_new_tokens", "integer from 1 to", "got a float 4.5"]),
    "max_new_tokens zero": ('[[requests]]\nprompt = "hi"\nmax_new_tokens = 0\n',
                            ["[[requests]] #1 max_new_tokens", "from 1 to 4095, got 0"]),
    "negative arrival": ('[[requests]]\nprompt = "hi"\narrival_step = -1\n', ["arrival_step", "from 0 to"]),
    "temperature nan": ('[[requests]]\nprompt = "hi"\ntemperature = nan\n', ["temperature", "number from 0.0"]),
    "temperature too small to sample": ('[[requests]]\nprompt = "hi"\ntemperature = 1e-30\n',
                                        ["temperature", "use 0 (greedy) or a number from 0.01"]),
    "top_k above vocabulary": ('[[requests]]\nprompt = "hi"\ntop_k = 257\n', ["top_k", "0 to 256"]),
    "two prompts": ('[[requests]]\nprompt = "hi"\nprompt_len = 4\n', ["prompt", "exactly one of",
                                                                       "prompt, prompt_len"]),
    "no prompt": ("[[requests]]\nmax_new_tokens = 4\n", ["prompt", "exactly one of", "got none"]),
    "token ids given as prompt": ("[[requests]]\nprompt = [1, 2]\n", ["prompt", "prompt_tokens = [...]"]),
    "empty prompt": ('[[requests]]\nprompt = ""\n', ["prompt", "is empty"]),
    "token id out of range": ("[[requests]]\nprompt_tokens = [1, 300]\n", ["prompt_tokens", "0 to 255, got 300"]),
    "prompt longer than the context": ("[[requests]]\nprompt_len = 4000\nmax_new_tokens = 200\n",
                                       ["[[requests]] #1 prompt", "4200 exceeds the context", "4096"]),
    "generator longer than the context": ("[[generators]]\ncount = 3\nprompt_len = [10, 4090]\n"
                                          "max_new_tokens = 100\n",
                                          ["[[generators]] #1 prompt_len", "exceeds the context"]),
    "request bigger than the pool": ("[engine]\nblock_size = 8\nnum_blocks = 2\n"
                                     "[[requests]]\nprompt_len = 20\nmax_new_tokens = 4\n",
                                     ["[[requests]] #1 prompt", "needs 3 KV blocks", "num_blocks = 2"]),
    "empty workload": ('title = "nothing"\n', ["requests", "workload is empty"]),
    "generator without count": ("[[generators]]\nprompt_len = 4\n", ["count", "is required"]),
    "distribution low above high": ("[[generators]]\ncount = 2\nprompt_len = [10, 5]\n",
                                    ["prompt_len", "low <= high"]),
    "distribution of the wrong shape": ("[[generators]]\ncount = 2\nprompt_len = [1, 2, 3]\n",
                                        ["prompt_len", "[low, high] (uniform)"]),
    "uniform without a range": ("[[generators]]\ncount = 2\nprompt_len = { uniform = 5 }\n",
                                ["prompt_len.uniform", "must be [low, high], got an integer 5"]),
    "empty choice": ("[[generators]]\ncount = 2\nmax_new_tokens = { choice = [] }\n",
                     ["max_new_tokens.choice", "non-empty array"]),
    "unknown arrival": ("[[generators]]\ncount = 2\narrival = 'poison'\n",
                        ["arrival", "did you mean 'poisson'", "'all_at_once'"]),
    "span without uniform": ("[[generators]]\ncount = 2\narrival_span = 4\n",
                             ["arrival_span", "only applies to arrival = 'uniform'"]),
    "uniform without span": ("[[generators]]\ncount = 2\narrival = 'uniform'\n", ["arrival_span", "required"]),
    "poisson without rate": ("[[generators]]\ncount = 2\narrival = 'poisson'\n", ["rate", "is required"]),
    "poisson rate too low": ("[[generators]]\ncount = 500\narrival = 'poisson'\nrate = 0.001\n",
                             ["rate", "past step 100000"]),
    "variant not a table": (OK_REQUEST + "[compare]\nfast = 3\n", ["compare.fast", "must be a table"]),
    "variant with an unknown key": (OK_REQUEST + "[compare.fast]\nbudget = 8\n",
                                    ["[compare.fast] budget", "unknown key"]),
    "variant with a pool too small": ("[[requests]]\nprompt_len = 40\n[compare.tight]\nnum_blocks = 1\n",
                                      ["[compare.tight] num_blocks", "request #1", "needs 4 KV blocks",
                                       "num_blocks = 1"]),
    "a device this machine lacks": ('[engine]\ndevice = "cuda"\n' + OK_REQUEST, ["[engine]", "device='cuda'"]),
    "invalid TOML": ('title = "unterminated\n', ["invalid TOML", "line 1"]),
    # A quoted key may hold a newline: the message shows it escaped, as it is written, on one line.
    "unknown key holding a newline": ('[engine]\n"max\\ntokens" = 1\n' + OK_REQUEST,
                                      ['[engine] "max\\ntokens": unknown key']),
    "variant named with a newline": (OK_REQUEST + '[compare."a\\nb"]\n', ['compare."a\\nb"', "is empty"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_scenario_gives_one_clear_line(tmp_path, case):
    text, fragments = CASES[case]
    if case == "a device this machine lacks" and torch.cuda.is_available():
        text, fragments = text.replace("cuda", "tpu"), ["[engine] device", "'tpu' is not allowed"]
    message = error_for(tmp_path, text)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError, match=f"{path}: no such scenario file"):
        load_scenario(str(path))


def test_directory_is_not_a_scenario(tmp_path):
    with pytest.raises(ScenarioError, match="is a directory"):
        load_scenario(str(tmp_path))


def test_unknown_builtin_name_suggests_the_closest():
    with pytest.raises(ScenarioError, match="unknown scenario 'mixed_lod'; did you mean 'mixed_load'"):
        load_scenario("mixed_lod")


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'title = "caf\xe9"\n')
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(str(path))


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(ScenarioError, match="no variant 'fast' in \\[compare\\]; variants: dense"):
        load_scenario("dense_vs_paged").build_engine("fast")


def test_a_good_file_from_a_path_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('title = "Mine"\nseed = 1\n[[requests]]\nprompt_tokens = [1, 2, 3]\nmax_new_tokens = 2\n'
                    "temperature = 0.7\ntop_k = 5\nseed = 9\ndeadline_step = 20\npriority = -2\n")
    s = load_scenario(str(path))
    assert (s.name, s.title) == ("mine", "Mine")
    assert s.requests == [dict(prompt=[1, 2, 3], max_new_tokens=2, arrival_step=0, priority=-2,
                               temperature=0.7, top_k=5, seed=9, deadline_step=20)]
    engine = s.build_engine()
    assert len(engine.run_until_done()[0]) == 2


def test_loads_names_the_given_path():
    with pytest.raises(ScenarioError, match="^here.toml: "):
        loads("nonsense = 1\n", "here.toml")


# -- the command line ----------------------------------------------------------------------------

def test_cli_bad_file_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[engine]\nmax_token_per_step = 8\n" + OK_REQUEST)
    result = CliRunner().invoke(main, ["scenario", str(path), "--headless"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert result.stdout == "" and len(lines) == 1
    assert lines[0].startswith(f"cbtui: error: {path}: [engine] max_token_per_step")


@pytest.mark.parametrize("args", [["scenario", "nope.toml"], ["scenario", "mixed_lod"],
                                  ["scenario", "long_prompt", "--variant", "huge", "--headless"]])
def test_cli_bad_names_exit_2(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "cbtui: error: " in result.output


def test_cli_process_prints_no_traceback(tmp_path):
    """The real process: stderr is exactly one line and the exit status is 2."""
    path = tmp_path / "bad.toml"
    path.write_text('[[requests]]\nprompt = "hi"\nmax_new_tokens = -3\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "cbtui", "scenario", str(path), "--headless"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"cbtui: error: {path}: [[requests]] #1 max_new_tokens: must be an "
                                        f"integer from 1 to 4095, got -3"]
