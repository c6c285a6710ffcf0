"""Hub names (--model ORG/NAME[@REVISION], engine/models/hub.py) against a Hugging Face cache laid out by
hand in a temporary folder (models--ORG--NAME/snapshots/COMMIT/..., refs/main), offline: nothing is
downloaded. A cached snapshot and a revision resolve; pickled weights only, or a model not in the cache,
are one line (naming the cache) and exit 2 from the command line."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cbtui.cli import main
from engine import Engine, EngineConfig
from engine.models import source
from engine.models.checkpoint import CheckpointError
from engine.models.hub import hub_checkpoint

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")  # to write the checkpoint the cache holds

ROOT = Path(__file__).resolve().parent.parent
MAIN, V2 = "a" * 40, "b" * 40  # commit hashes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_test_checkpoint", ROOT / "scripts" / "make_test_checkpoint.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    path = tmp_path_factory.mktemp("llama")
    maker.make_checkpoint(path, "llama", seed=2)
    return path


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline: the environment for subprocesses, the constants (read
    when huggingface_hub is imported) for this one."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cached(cache: Path, repo: str, files: dict[str, Path | bytes], commit: str = MAIN,
           ref: str | None = "main") -> Path:
    """A snapshot of `repo` at `commit` (as huggingface_hub lays it out), named by refs/`ref`."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copy(content, snapshot / name)
        else:
            (snapshot / name).write_bytes(content)
    if ref is not None:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return snapshot


def checkpoint_files(path: Path) -> dict[str, Path | bytes]:
    return {p.name: p for p in path.iterdir() if p.is_file()}


def test_a_cached_snapshot_resolves_and_runs(checkpoint, hub_cache):
    snapshot = cached(hub_cache, "someorg/tiny-llama", checkpoint_files(checkpoint))
    assert hub_checkpoint("someorg/tiny-llama") == snapshot
    resolved = source.resolve("someorg/tiny-llama")
    assert (resolved.kind, resolved.name, resolved.directory, resolved.random) == ("hub", "tiny-llama", snapshot,
                                                                                   False)
    assert source.model_spec("someorg/tiny-llama").vocab_size == 384
    engine = Engine(EngineConfig(model="someorg/tiny-llama", device="cpu", dtype="float32"))
    engine.add_request("Hello, world!", max_new_tokens=3)
    while engine.has_unfinished():
        engine.step()
    header = engine.header()
    assert header.model == "tiny-llama" and header.checkpoint == "someorg/tiny-llama" and not header.random_weights


def test_a_revision_by_branch_or_commit(checkpoint, hub_cache):
    main_snapshot = cached(hub_cache, "someorg/tiny-llama", checkpoint_files(checkpoint))
    v2 = cached(hub_cache, "someorg/tiny-llama", checkpoint_files(checkpoint), commit=V2, ref="v2")
    assert hub_checkpoint("someorg/tiny-llama") == main_snapshot
    assert hub_checkpoint("someorg/tiny-llama@v2") == v2
    assert hub_checkpoint(f"someorg/tiny-llama@{V2}") == v2
    assert source.resolve("someorg/tiny-llama@v2").name == "tiny-llama"
    with pytest.raises(CheckpointError) as missing:
        hub_checkpoint("someorg/tiny-llama@v9")
    assert "\n" not in str(missing.value) and str(hub_cache) in str(missing.value)


def test_pickled_weights_only_are_refused_in_one_line(hub_cache):
    snapshot = cached(hub_cache, "someorg/pickled", {"config.json": b"{}", "pytorch_model.bin": b"not loaded"})
    with pytest.raises(CheckpointError) as refused:
        hub_checkpoint("someorg/pickled")
    assert str(refused.value) == (f"someorg/pickled: the snapshot {snapshot} has only pickled weights "
                                  f"(pytorch_model.bin), which cbtui refuses to load; use a safetensors revision")


def test_not_cached_and_offline_is_one_line_naming_the_cache(hub_cache):
    with pytest.raises(CheckpointError) as missing:
        hub_checkpoint("someorg/absent")
    assert str(missing.value) == (f"someorg/absent: not in the Hugging Face cache ({hub_cache}) and HF_HUB_OFFLINE "
                                  f"is set; download it with network first, or give a local directory")


def test_the_command_line_runs_a_cached_hub_model(checkpoint, hub_cache):
    cached(hub_cache, "someorg/tiny-llama", checkpoint_files(checkpoint))
    result = CliRunner().invoke(main, ["scenario", "mixed_load", "--model", "someorg/tiny-llama", "--device", "cpu",
                                       "--headless", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "model=tiny-llama" in result.stdout


def test_the_command_line_says_why_in_one_line_and_exits_2(hub_cache):
    """The real process, with the cache and offline mode from the environment (HF_HUB_CACHE, HF_HUB_OFFLINE)."""
    cached(hub_cache, "someorg/pickled", {"config.json": b"{}", "pytorch_model.bin": b"not loaded"})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for model, says in (("someorg/absent", f"not in the Hugging Face cache ({hub_cache}) and HF_HUB_OFFLINE is set"),
                        ("someorg/pickled", "only pickled weights (pytorch_model.bin)")):
        done = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "mixed_load", "--headless", "--model", model],
                              capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"cbtui: error: {model}: ") and says in done.stderr
