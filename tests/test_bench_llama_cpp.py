"""The llama.cpp row of `cbtui bench real`, with a stand-in for llama-cpp-python (not a test
dependency) written where the bench's child process imports it: what it runs, what it reports,
and what happens when it is missing, refuses the file, crashes or hangs."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

import cbtui.bench.llama_cpp_system as llama_system
from cbtui.bench.llama_cpp_system import NAME, gguf_path, llama_cpp_problem
from cbtui.bench.llama_cpp_worker import LlamaCppFailed, LlamaCppProcess, run_requests
from cbtui.bench.real import run_real
from cbtui.bench.real_report import size_lines

# Greedy 'generation': the prompt's last token plus 1, 2, 3, ... for ever, as llama-cpp-python's
# generate yields tokens until the caller stops. The file's name picks a misbehaviour.
FAKE = textwrap.dedent('''
    import os, signal, time
    __version__ = "0.0-test"

    class Llama:
        def __init__(self, model_path, **kwargs):
            if model_path.endswith("refuse.gguf"):
                raise ValueError("unknown model architecture")
            self.path, self.kwargs = model_path, kwargs

        def generate(self, tokens, **kwargs):
            assert kwargs["temp"] == 0.0 and kwargs["repeat_penalty"] == 1.0  # greedy, nothing penalised
            if self.path.endswith("crash.gguf") and len(tokens) > 2:
                os.kill(os.getpid(), signal.SIGSEGV)
            if self.path.endswith("hang.gguf") and len(tokens) > 2:
                time.sleep(3600)
            if self.path.endswith("threads.gguf"):  # says what it was given, as its first tokens
                yield self.kwargs["n_threads"]
                yield self.kwargs["n_threads_batch"]
            token = tokens[-1]
            while True:
                token += 1
                yield token
''')


class InProcessLlama:
    def __init__(self):
        self.prompts: list[list[int]] = []

    def generate(self, tokens, **kwargs):
        self.prompts.append(list(tokens))
        token = tokens[-1]
        while True:
            token += 1
            yield token


def test_runs_requests_one_after_another_to_their_lengths_and_stop_ids():
    llm = InProcessLlama()
    out = run_requests(llm, [7], [[1, 2], [10], [20, 21, 22]], [3, 5, 4], (13,))
    assert out["outputs"] == [[3, 4, 5], [11, 12, 13], [23, 24, 25, 26]]  # the second stops at 13, kept
    assert llm.prompts == [[7], [1, 2], [10], [20, 21, 22]]  # the warm-up, then arrival order
    assert len(out["ttft_s"]) == 3 and out["ttft_s"] == sorted(out["ttft_s"])  # each waits for those before
    assert len(out["tpot_s"]) == 3 and out["wall_s"] > 0


def test_gguf_path_is_a_gguf_file_or_nothing(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert gguf_path(str(f)) == f
    assert gguf_path(str(tmp_path / "missing.gguf")) is None
    assert gguf_path("tiny") is None and gguf_path(str(tmp_path)) is None


def test_problem_says_not_installed_or_not_gguf(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "not installed" in llama_cpp_problem("tiny")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert "not a GGUF file" in llama_cpp_problem("tiny")


@pytest.fixture
def fake_llama_cpp(monkeypatch, tmp_path):
    """The stand-in importable by the child (spawn passes sys.path on); returns a function that
    points the bench's model at a GGUF file of the given name."""
    (tmp_path / "llama_cpp.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))

    def use(name: str):
        path = tmp_path / name
        path.write_bytes(b"GGUF")
        monkeypatch.setattr(llama_system, "gguf_path", lambda model: path)
        monkeypatch.setattr(llama_system, "llama_cpp_problem", lambda model: None)
        return str(path)
    return use


def _rows(size):
    return {r["system"]: r for r in size["report"]["systems"]}


def test_bench_real_has_a_llama_cpp_row_beside_the_others(fake_llama_cpp):
    fake_llama_cpp("model.gguf")
    report = run_real("tiny", (2, 3), max_new_tokens=3, repeat=2, dtype="float32", threads=1, hf=False)
    assert "0.0-test" in report["llama_cpp"]
    for size in report["sizes"]:
        row = _rows(size)[NAME]
        assert row["available"] and row["repetitions"] == 2, row
        assert row["output_tokens"] == 3 * size["requests"] and row["same_outputs_as_ours"] is not None
        assert len(row["ours_over_this_runs"]) == 2
        assert any(NAME in names for names in size["report"]["schedule"])
        text = "\n".join(size_lines(size))
        assert "llama.cpp" in text and "ours continuous over llama.cpp" in text


def test_the_child_gets_the_threads_asked_for(fake_llama_cpp):
    process = LlamaCppProcess(fake_llama_cpp("threads.gguf"), threads=3, context=64)
    try:
        out = process.run([1], [[5, 6]], [2], (), timeout_s=60)
    finally:
        process.close()
    assert out["outputs"] == [[3, 3]]  # n_threads, n_threads_batch


def test_ctrl_c_is_left_to_the_parent(fake_llama_cpp):
    """Ctrl-C goes to the whole process group: the child goes on (no traceback of its own) until
    the bench, which reports what it measured, closes it."""
    import os
    import signal
    import time

    process = LlamaCppProcess(fake_llama_cpp("model.gguf"), threads=1, context=64)
    try:
        os.kill(process._process.pid, signal.SIGINT)
        time.sleep(0.5)
        assert process._process.is_alive()
        assert process.run([1], [[5, 6]], [2], (), timeout_s=60)["outputs"] == [[7, 8]]
    finally:
        process.close()
    assert not process._process.is_alive()


def test_a_crash_in_llama_cpp_is_a_row_saying_so(fake_llama_cpp):
    fake_llama_cpp("crash.gguf")
    report = run_real("tiny", (2,), max_new_tokens=2, repeat=2, dtype="float32", threads=1, hf=False)
    rows = _rows(report["sizes"][0])
    assert not rows[NAME]["available"] and "SIGSEGV" in rows[NAME]["note"], rows[NAME]
    assert rows["ours continuous"]["available"] and rows["ours continuous"]["repetitions"] == 2


def test_a_hang_is_stopped_at_the_time_limit_and_the_process_is_gone(fake_llama_cpp):
    process = LlamaCppProcess(fake_llama_cpp("hang.gguf"), threads=1, context=64)
    with pytest.raises(LlamaCppFailed, match="no answer in 2 s"):
        process.run([1], [[5, 6, 7]], [2], (), timeout_s=2)
    assert not process._process.is_alive()
    with pytest.raises(LlamaCppFailed, match="gone"):
        process.run([1], [[5]], [2], (), timeout_s=2)


def test_a_gguf_llama_cpp_cannot_load_is_said_in_the_heading(fake_llama_cpp):
    fake_llama_cpp("refuse.gguf")
    report = run_real("tiny", (2,), max_new_tokens=2, repeat=1, dtype="float32", threads=1, hf=False)
    assert "loading the GGUF" in report["llama_cpp"] and "unknown model architecture" in report["llama_cpp"]
    assert NAME not in _rows(report["sizes"][0])


def test_no_llama_cpp_asked_is_said(fake_llama_cpp):
    fake_llama_cpp("model.gguf")
    report = run_real("tiny", (2,), max_new_tokens=2, repeat=1, dtype="float32", threads=1, hf=False,
                      llama_cpp=False)
    assert "--no-llama-cpp" in report["llama_cpp"] and NAME not in _rows(report["sizes"][0])
