"""Hostile checkpoint directories (issue #30 items 1, 5, 6, 7, 9, 15), built here from
scripts/make_test_checkpoint.py output: config.json values of the wrong type or an absurd size,
special files (FIFOs, /dev/zero, directories) where files belong, a tokenizer.json whose regex makes
the Rust tokenizer panic, unreadable weights, and a directory that carries its own Python for
transformers to run. Each ends as one CheckpointError line naming the file, quickly, with nothing run;
a few go through the command line (exit 2, one stderr line, no traceback)."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_maker

from engine import Engine, EngineConfig
from engine.models.checkpoint import CheckpointError
from engine.models.source import tokenizer_for

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
DELETE = object()  # a config change that removes the key


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base")
    checkpoint_maker().make_checkpoint(path, "llama", seed=1)
    return path


def variant(base: Path, where: Path, name: str = "ckpt", **changes) -> Path:
    """A copy of the base checkpoint with config.json's keys changed."""
    path = where / name
    shutil.copytree(base, path)
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    return path


def build(path: Path, **kw) -> Engine:
    return Engine(EngineConfig(model=str(path), device="cpu", dtype="float32", **kw))


def refused(action, seconds: float = 20.0) -> str:
    """The one-line CheckpointError `action` raises, within `seconds` (run in a thread, so a hang
    fails the test instead of stopping the run)."""
    outcome: list[BaseException | None] = []

    def attempt():
        try:
            action()
        except BaseException as exc:  # the test asserts which one below
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still running after {seconds} s (a hang)"
    error = outcome[0]
    assert isinstance(error, CheckpointError), f"not a CheckpointError: {error!r}"
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    return message


# -- item 5: config.json values of the wrong type, validated whole before use -------------------------

WRONG_TYPES = {
    "architectures a dict": ({"architectures": {"0": "LlamaForCausalLM"}}, "architectures="),
    "architectures an int": ({"architectures": 3}, "architectures=3"),
    "architectures a nested list": ({"architectures": [["LlamaForCausalLM"]]}, "architectures="),
    "architectures empty": ({"architectures": []}, "architectures=[]"),
    "head_dim a string": ({"head_dim": "16"}, 'head_dim="16"'),
    "head_dim a list": ({"head_dim": [16]}, "head_dim=[16]"),
    "head_dim odd": ({"head_dim": 15}, "head_dim=15"),
    "rms_norm_eps null": ({"rms_norm_eps": None}, "rms_norm_eps=null"),
    "rms_norm_eps a list": ({"rms_norm_eps": [1e-6]}, "rms_norm_eps="),
    "rope_parameters a list": ({"rope_parameters": [1]}, "rope_parameters=[1]"),
    "rope_parameters a string": ({"rope_parameters": "llama3"}, 'rope_parameters="llama3"'),
    "rope_scaling a string": ({"rope_parameters": DELETE, "rope_scaling": "linear"}, 'rope_scaling="linear"'),
    "llama3 low == high": ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0,
                                                "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 64}}, "high_freq_factor=4.0"),
    "rope factor a string": ({"rope_parameters": {"rope_type": "linear", "factor": "2"}}, "rope_parameters.factor"),
    "rope_theta negative": ({"rope_parameters": {"rope_type": "default", "rope_theta": -1}}, "rope_theta=-1"),
    "num_attention_heads a string": ({"num_attention_heads": "4"}, "num_attention_heads="),
    "vocab_size a float": ({"vocab_size": 384.5}, "vocab_size=384.5"),
    "hidden_size true": ({"hidden_size": True}, "hidden_size=true"),
    "max_position_embeddings negative": ({"max_position_embeddings": -1}, "max_position_embeddings=-1"),
    "sliding_window a list": ({"sliding_window": [4]}, "sliding_window=[4]"),
    "tie_word_embeddings a string": ({"tie_word_embeddings": "yes"}, "tie_word_embeddings="),
    "eos_token_id a string": ({"eos_token_id": "</s>"}, "eos_token_id="),
    "hidden_act a list": ({"hidden_act": ["silu"]}, "hidden_act="),
    "num_key_value_heads zero": ({"num_key_value_heads": 0}, "num_key_value_heads=0"),
}


@pytest.mark.parametrize("name", list(WRONG_TYPES))
def test_a_config_value_of_the_wrong_type_is_one_line(base, tmp_path, name):
    changes, words = WRONG_TYPES[name]
    path = variant(base, tmp_path, **changes)
    message = refused(lambda: build(path))
    assert f"{path / 'config.json'}: " in message and words in message, message


@pytest.mark.parametrize("text, words", [
    ('{"vocab_size": ' + "9" * 5000 + "}", "a number of more than 4300 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("[1, 2]", "must hold a JSON object"),
    ("\xff\xfe", "not UTF-8"),
], ids=["5000 digits", "100000 brackets", "100000 brackets in an object", "a list", "not UTF-8"])
def test_a_config_that_is_no_config_says_so(base, tmp_path, text, words):
    """Item 15 too: deep nesting names the file and its nesting, not num_blocks or the model's size."""
    path = variant(base, tmp_path)
    (path / "config.json").write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    message = refused(lambda: build(path))
    assert words in message and str(path / "config.json") in message and "num_blocks" not in message, message


def test_wrong_types_through_a_scenario_file_and_the_cli(base, tmp_path):
    """A scenario file's model and `cbtui bench --model`: exit 2, one line naming the key."""
    path = variant(base, tmp_path, head_dim="16")
    scenario = tmp_path / "s.toml"
    text = (ROOT / "scenarios" / "mixed_load.toml").read_text()
    scenario.write_text(text.replace('model = "tiny"', f'model = "{path}"'))
    huge = tmp_path / "huge.toml"
    huge.write_text(text.replace("max_tokens_per_step = 48", "max_tokens_per_step = " + "9" * 5000))
    for args, words in ((["scenario", str(scenario), "--headless"], 'head_dim="16" must be'),
                        (["bench", "--model", str(path), "--device", "cpu"], 'head_dim="16" must be'),
                        (["scenario", str(huge), "--headless"], "line 11: a number of more than 4300 digits")):
        run = cli(*args)
        assert run.returncode == 2, run.stderr
        assert run.stderr.count("\n") == 1 and words in run.stderr and "Traceback" not in run.stderr, run.stderr


def cli(*args: str, stdin: str = "", timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, input=stdin,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


# -- item 6: absurd sizes, checked before anything is allocated ----------------------------------------

def test_absurd_layer_counts_are_refused_before_names_are_made(base, tmp_path):
    billion = variant(base, tmp_path, "billion", num_hidden_layers=10**9)
    assert "num_hidden_layers=1000000000 must be an integer from 1 to 1024" in refused(lambda: build(billion), 5)
    more = variant(base, tmp_path, "more", num_hidden_layers=1000)
    assert "num_hidden_layers=1000, but the weights hold tensors for 2 layers" in refused(lambda: build(more), 5)
    wide = variant(base, tmp_path, "wide", hidden_size=2**40)
    assert "hidden_size=1099511627776 must be an integer from 1 to 65536" in refused(lambda: build(wide), 5)


def test_a_20m_context_builds_rope_rows_for_the_positions_used(base, tmp_path):
    """max_position_embeddings = 2e7 built 9 GB of float64 rope tables; the table now holds the
    positions runs reach, and the default CPU pool does not grow to one 20M-token sequence."""
    from engine.kv.paged_store import kv_bytes_per_token
    from engine.runner.model_runner import CPU_POOL_BYTES, default_num_blocks

    path = variant(base, tmp_path, max_position_embeddings=2 * 10**7)
    engine = build(path, num_blocks=64, block_size=16)
    engine.add_request(prompt=list(range(2, 40)), max_new_tokens=4)
    engine.run_until_done()
    rotary = engine.runner.model.rotary
    assert rotary.length == 4096 and engine.runner.spec.max_context == 2 * 10**7
    assert all(cos.shape[0] == 4096 for cos, _ in rotary._tables.values())
    spec = engine.runner.spec
    per_token = kv_bytes_per_token(spec.num_layers, spec.num_kv_heads, spec.head_dim, torch.float32)
    blocks = default_num_blocks(EngineConfig(model=str(path)), torch.device("cpu"), per_token)
    assert blocks * 16 * per_token <= CPU_POOL_BYTES


def test_the_rope_table_grows_exactly_for_a_long_prompt(base, tmp_path):
    """A prompt past the first 4096 rows: the table doubles, and greedy tokens still equal
    transformers' (alone and batched with a short request whose decodes ran before the growth)."""
    path = variant(base, tmp_path, max_position_embeddings=8192)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False)
    gen = torch.Generator().manual_seed(3)
    long_prompt = torch.randint(2, 384, (4300,), generator=gen).tolist()
    short_prompt = [5, 6, 7, 8]

    def hf_greedy(prompt, new):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(new):
                ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
        return ids[len(prompt):]

    engine = build(path, ignore_eos=True, max_tokens_per_step=512, prefill_chunk_size=512, num_blocks=400,
                   block_size=16)
    short = engine.add_request(prompt=short_prompt, max_new_tokens=8)
    for _ in range(3):
        engine.step()
    assert engine.runner.model.rotary.length == 4096
    long = engine.add_request(prompt=long_prompt, max_new_tokens=3)
    outputs = engine.run_until_done()
    assert engine.runner.model.rotary.length == 8192
    assert outputs[long] == hf_greedy(long_prompt, 3)
    assert outputs[short] == hf_greedy(short_prompt, 8)


# -- item 7: special files where the checkpoint's files belong -----------------------------------------

def _special(base: Path, tmp_path: Path, how: str) -> Path:
    path = variant(base, tmp_path)
    weights = path / "model.safetensors"
    if how == "config.json -> /dev/zero":
        (path / "config.json").unlink()
        (path / "config.json").symlink_to("/dev/zero")
    elif how == "config.json a FIFO":
        (path / "config.json").unlink()
        os.mkfifo(path / "config.json")
    elif how == "config.json a directory":
        (path / "config.json").unlink()
        (path / "config.json").mkdir()
    elif how == "config.json of 100 MB":
        with open(path / "config.json", "r+b") as f:
            f.truncate(100 << 20)  # sparse: no disk used
    elif how == "model.safetensors a FIFO":
        weights.unlink()
        os.mkfifo(weights)
    elif how == "x.safetensors a FIFO":
        weights.unlink()
        os.mkfifo(path / "x.safetensors")
    elif how == "model.safetensors -> /dev/zero":
        weights.unlink()
        weights.symlink_to("/dev/zero")
    elif how == "a shard named by the index a FIFO":
        weights.rename(path / "part-1.safetensors")
        from safetensors import safe_open

        with safe_open(str(path / "part-1.safetensors"), framework="pt") as f:
            names = list(f.keys())
        weight_map = {name: "part-1.safetensors" for name in names}
        weight_map[names[0]] = "part-2.safetensors"
        os.mkfifo(path / "part-2.safetensors")
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    elif how in ("the index names /dev/zero", "the index names ../x.safetensors"):
        name = how.rsplit(" ", 1)[-1]
        weights.rename(path / "part-1.safetensors")
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": name}}))
    elif how == "tokenizer.json a FIFO":
        (path / "tokenizer.json").unlink()
        os.mkfifo(path / "tokenizer.json")
    elif how == "tokenizer_config.json -> /dev/zero":
        (path / "tokenizer_config.json").unlink()
        (path / "tokenizer_config.json").symlink_to("/dev/zero")
    elif how == "chat_template.jinja a FIFO":
        (path / "chat_template.jinja").unlink()
        os.mkfifo(path / "chat_template.jinja")
    else:
        raise AssertionError(how)
    return path


SPECIAL = {
    "config.json -> /dev/zero": ("config.json", "a character device, not a regular file"),
    "config.json a FIFO": ("config.json", "a FIFO, not a regular file"),
    "config.json a directory": ("config.json", "a directory, not a regular file"),
    "config.json of 100 MB": ("config.json", "more than the 64 MiB"),
    "model.safetensors a FIFO": ("model.safetensors", "a FIFO, not a regular file"),
    "x.safetensors a FIFO": ("x.safetensors", "a FIFO, not a regular file"),
    "model.safetensors -> /dev/zero": ("model.safetensors", "a character device"),
    "a shard named by the index a FIFO": ("part-2.safetensors", "a FIFO, not a regular file"),
    "the index names /dev/zero": ("model.safetensors.index.json", "may only name files in the checkpoint's own"),
    "the index names ../x.safetensors": ("model.safetensors.index.json", "may only name files in the checkpoint"),
    "tokenizer.json a FIFO": ("tokenizer.json", "a FIFO, not a regular file"),
    "tokenizer_config.json -> /dev/zero": ("tokenizer_config.json", "a character device"),
    "chat_template.jinja a FIFO": ("chat_template.jinja", "a FIFO, not a regular file"),
}


@pytest.mark.parametrize("how", list(SPECIAL))
def test_special_files_are_refused_without_hanging(base, tmp_path, how):
    path = _special(base, tmp_path, how)
    file, words = SPECIAL[how]

    def load_and_ask_for_a_chat_prompt():
        build(path)
        tokenizer_for(str(path)).chat_prompt("hi")

    try:
        message = refused(load_and_ask_for_a_chat_prompt, 10)
    finally:
        for fifo in path.iterdir():  # a reader still blocked (the old code) gets its end of file
            if stat.S_ISFIFO(fifo.lstat().st_mode):
                with contextlib.suppress(OSError):  # no reader: nothing to wake
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert f"{path / file}: " in message and words in message, message


def test_a_fifo_config_through_the_cli_is_one_line(base, tmp_path):
    path = _special(base, tmp_path, "config.json a FIFO")
    run = cli("scenario", "mixed_load", "--headless", "--model", str(path), timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"{path / 'config.json'}: is a FIFO" in run.stderr


# -- item 15: an unreadable file is not a missing one ----------------------------------------------------

def test_unreadable_weights_say_permission_denied(base):
    """chmod 000 model.safetensors said "No such file". Root reads anything, so as root the load runs
    as nobody (setpriv) in a world-readable copy."""
    folder = Path(tempfile.mkdtemp(prefix="cbtui-unreadable-"))
    try:
        path = folder / "ckpt"
        shutil.copytree(base, path)
        os.chmod(folder, 0o755)
        os.chmod(path, 0o755)
        for file in path.iterdir():
            os.chmod(file, 0o644)
        os.chmod(path / "model.safetensors", 0)
        code = ("import torch\nfrom engine.models.checkpoint import load_checkpoint, CheckpointError\n"
                f"try:\n    load_checkpoint({str(path)!r}, torch.device('cpu'), torch.float32)\n"
                "except CheckpointError as exc:\n    print(exc)\n")
        command = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: cannot make a file unreadable")
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/",
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        if "ModuleNotFoundError" in run.stderr or "Permission denied: '" + str(ROOT) in run.stderr:
            pytest.skip(f"nobody cannot import the project here: {run.stderr.strip().splitlines()[-1]}")
        assert run.stdout.strip() == (f"{path / 'model.safetensors'}: permission denied; make it readable "
                                      f"(chmod a+r) or run as its owner"), (run.stdout, run.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- item 9: a tokenizer.json that makes the Rust tokenizer panic ----------------------------------------

def _panicking_tokenizer(base: Path, tmp_path: Path) -> Path:
    path = variant(base, tmp_path, "panic")
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated",
                                  "invert": False}  # catastrophic backtracking: Oniguruma's retry limit
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    return path


def test_a_tokenizer_panic_is_one_line_and_prints_nothing_else(base, tmp_path, capfd):
    path = _panicking_tokenizer(base, tmp_path)
    tokenizer = tokenizer_for(str(path))
    assert tokenizer.encode("hello") == tokenizer.encode("hello")  # ordinary text still encodes
    with pytest.raises(CheckpointError) as info:
        tokenizer.encode("a" * 40 + "b")
    message = str(info.value)
    assert message.startswith(f"{path / 'tokenizer.json'}: the tokenizer failed on a prompt of 41 characters")
    assert "retry-limit" in message and "\n" not in message
    with pytest.raises(CheckpointError, match="the tokenizer failed on the chat template's output"):
        tokenizer.chat_prompt("a" * 40 + "b")
    out, err = capfd.readouterr()
    assert "panicked" not in err and "backtrace" not in err.lower(), err


def test_a_tokenizer_panic_through_the_cli_is_one_line(base, tmp_path):
    path = _panicking_tokenizer(base, tmp_path)
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'title = "x"\n[engine]\nmodel = "{path}"\n[[requests]]\nprompt = "{"a" * 40}b"\n'
                        f"max_new_tokens = 2\n")
    run = cli("scenario", str(scenario), "--headless", env={"RUST_BACKTRACE": "1"})
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "the tokenizer failed on a prompt of 41 characters" in run.stderr and "panicked" not in run.stderr


# -- item 1: a checkpoint's own Python never runs, nothing prompts ---------------------------------------

def _remote_code(base: Path, tmp_path: Path, name: str = "remote") -> tuple[Path, Path]:
    """A directory that asks transformers to run its remote.py (which would write `marker`): an
    unknown model_type with auto_map in config.json and tokenizer_config.json."""
    marker = tmp_path / f"{name}-ran"
    path = variant(base, tmp_path, name, model_type="evil_remote", auto_map={
        "AutoConfig": "remote.EvilConfig", "AutoModelForCausalLM": "remote.EvilModel",
        "AutoTokenizer": ["remote.EvilTokenizer", None]})
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["remote.EvilTokenizer", None]})
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "remote.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil_remote'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return path, marker


def test_no_code_path_lets_transformers_run_a_checkpoints_code():
    """Every from_pretrained call in the product passes trust_remote_code=False; nothing uses
    AutoTokenizer or AutoConfig (their loaders would run a tokenizer's or config's auto_map)."""
    calls = []
    for folder in ("cbtui", "engine", "scenarios"):
        for file in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(file.read_text(), str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.Name | ast.Attribute):
                    name = node.id if isinstance(node, ast.Name) else node.attr
                    assert name not in ("AutoTokenizer", "AutoConfig", "AutoProcessor"), f"{file}:{node.lineno}"
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "from_pretrained":
                    trust = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
                    assert len(trust) == 1 and isinstance(trust[0], ast.Constant) and trust[0].value is False, \
                        f"{file}:{node.lineno} calls from_pretrained without trust_remote_code=False"
                    calls.append(file.name)
    assert calls, "the bench's transformers rows load with from_pretrained: the scan found none"


def test_a_checkpoint_asking_to_run_its_code_runs_without_it(base, tmp_path, monkeypatch):
    """Our engine, tokenizer and chat template read the directory; transformers (the bench's rows)
    refuses it in the row's note; 'y' waiting on stdin is never read; remote.py never runs."""
    from cbtui.bench.run import run_systems
    from cbtui.bench.workloads import make_workload

    path, marker = _remote_code(base, tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 20))
    engine = build(path)
    engine.add_request(prompt=tokenizer_for(str(path)).chat_prompt("Hello"), max_new_tokens=3)
    engine.run_until_done()
    workload = make_workload("varied", scale=1 / 64, model=str(path), output_range=(2, 3))
    report = run_systems(workload, "cpu", "sdpa", hf=True, ablations=False)
    rows = {row["system"]: row for row in report["systems"]}
    assert rows["ours continuous"]["available"]
    hf_rows = [row for name, row in rows.items() if name.startswith("HF")]
    assert hf_rows and all(not row["available"] and "checkpoint's own Python" in row["note"]
                           and "cbtui never does" in row["note"] for row in hf_rows), hf_rows
    assert sys.stdin.read() == "y\n" * 20  # nobody asked
    assert not marker.exists()


def test_the_chat_scenario_on_such_a_checkpoint_with_y_piped_in(base, tmp_path):
    path, marker = _remote_code(base, tmp_path)
    run = cli("scenario", "chat", "--headless", "--steps", "4", "--model", str(path), stdin="y\n" * 20)
    assert run.returncode == 0, run.stderr
    assert "custom code" not in run.stdout + run.stderr and not marker.exists()


def test_a_path_with_escape_sequences_is_shown_written_out(base, tmp_path):
    """An OSC sequence in a model's path (from a .toml, or the directory's name) reaches no terminal:
    not through an error line, nor through the bench table."""
    from rich.console import Console

    from cbtui.bench.report import bench_table

    path = variant(base, tmp_path, "ck\x1b]0;owned\x07pt", head_dim="16")
    run = cli("scenario", "mixed_load", "--headless", "--model", str(path))
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "\x1b" not in run.stderr and "\x07" not in run.stderr and "ck\\x1b]0;owned\\x07pt" in run.stderr
    report = {"machine": {"cpu": "x", "cpu_count": 2, "torch_threads": 2, "torch": "2"}, "dtype": "float32",
              "workload": {"name": "varied", "requests": 1, "prompt_len": [1, 2], "new_tokens": [1, 2],
                           "model": str(path)},
              "systems": [{"system": "HF generate", "available": False,
                           "note": f"failed: ValueError: {path} [red]\x1b]52;c;cHduZWQ=\x07"}]}
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(bench_table(report))
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "ck\\x1b]0;owned\\x07pt" in text, text
    assert "[red]" in text  # shown as written, not taken for markup
