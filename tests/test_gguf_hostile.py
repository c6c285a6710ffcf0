"""Hostile --model files: a GGUF header that lies, a FIFO, /dev/zero, a symlink loop, a chat template
that reaches for Python internals or loops forever. Each is one CheckpointError line, quickly, and the
CLI exits 2 with that line."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import checkpoint_maker

from engine.models import source
from engine.models.chat_template import ChatTemplateError, render
from engine.models.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CBTUI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def s(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def header(tensors: int, kvs: int, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, kvs) + body + bytes(64)


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<II", 4, value)


def tensor_info(name: str, dims: list[int], qtype: int, offset: int) -> bytes:
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", qtype, offset)


LIARS = {
    "2^40 tensors": (header(2**40, 0), "cannot fit"),
    "2^40 metadata keys": (header(0, 2**40), "cannot fit"),
    "a 2^40-byte string": (header(0, 1, struct.pack("<Q", 2**40) + b"key"), "string"),
    "a 2^40-item array": (header(0, 1, s("k") + struct.pack("<IIQ", 9, 0, 2**40)), "array"),
    "an unknown value type": (header(0, 1, s("k") + struct.pack("<I", 77)), "value type"),
    "an unknown quant type": (header(1, 0, tensor_info("token_embd.weight", [32, 4], 99, 0)), "quantization type 99"),
    "an offset past the end": (header(1, 0, tensor_info("token_embd.weight", [32, 4], 0, 2**50)), "past the end"),
    "too many dimensions": (header(1, 0, tensor_info("x", [1] * 9, 0, 0)), "dimensions"),
    "a bad alignment": (header(0, 1, kv_u32("general.alignment", 3)), "alignment"),
    "no magic": (b"GGUX" + bytes(100), "not a GGUF file"),
    "too short": (b"GGUF", "too short"),
    "an empty model": (header(0, 0), "metadata general.architecture is missing"),
}


@pytest.mark.parametrize("name", list(LIARS))
def test_a_lying_header_is_one_line(tmp_path, name):
    data, words = LIARS[name]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        source.resolve(str(path))
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert "\n" not in message and str(path) in message and words in message, message


def test_fifo_dev_zero_and_symlink_loop(tmp_path):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    loop_a, loop_b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    for model, words in ((str(fifo), "not a regular file"), ("/dev/zero", "not a directory"),
                         (str(loop_a), "cannot open it")):
        with pytest.raises(CheckpointError, match=words) as info:
            source.resolve(model)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "{{ messages.__class__.__base__ }}{{ self._TemplateReference__context }}",
    "{% for i in range(10**6) %}{% for j in range(10**6) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
    "{{ 9 ** 9 ** 9 }}",
    "{% for i in range(100000) %}{{ 'a' * 1000 }}{% endfor %}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ raise_exception('no system messages') }}",
    "{% if %}",
])
def test_a_hostile_chat_template_is_refused_quickly(template):
    start = time.perf_counter()
    try:
        out = render(template, [{"role": "user", "content": "hi"}])
    except ChatTemplateError as exc:
        assert "\n" not in str(exc)
    else:  # the sandbox made the attribute undefined: nothing of Python's leaked into the text
        assert "class" not in out and "function" not in out and "pwned" not in out, out
    assert time.perf_counter() - start < 5


# Chat templates that the sandbox's quick refusals do not catch: filters and loops that take gigabytes
# or hours. The child process that renders them is capped in memory and killed on time (issue #30, item 8).
UNBOUNDED = {
    "center(3e9)": "{{ 'x'|center(3000000000) }}",
    "format to 3e9 wide": "{{ '%3000000000s'|format('x') }}",
    "str.format to 3e9 wide": "{{ '{:>3000000000}'.format('x') }}",
    "replace into 10 GB": "{{ ('x' * 1000000)|replace('x', 'y' * 10000) }}",
    "~ doubling in a loop": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                            "{% endfor %}{{ ns.s|length }}",
    "indent by 3e8": "{{ 'x\nx'|indent(300000000) }}",
    "nested loops over a long string": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}"
                                       "{% endfor %}",
    "lipsum(1e8)": "{{ lipsum(n=100000000) }}",
    "'x' * 3e9": "{{ 'x' * 3e9 }}",
    "include": "{% include 'other.jinja' %}",
    "import": "{% import 'macros.jinja' as m %}",
    "extends": "{% extends 'base.jinja' %}",
}


@pytest.mark.parametrize("name", list(UNBOUNDED))
def test_a_template_is_bounded_in_time_and_memory(name, monkeypatch):
    from engine.models import chat_template

    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 4.0)
    monkeypatch.setattr(chat_template, "RENDER_MEMORY", 512 << 20)
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError) as info:
        render(UNBOUNDED[name], [{"role": "user", "content": "hi"}])
    assert time.perf_counter() - start < 8
    message = str(info.value)
    assert "\n" not in message and message.startswith("the chat template"), message
    assert any(words in message for words in ("took more than 4 s", "more than 512 MiB", "TypeError",
                                              "passed 1048576 characters")), message


def test_a_rendered_template_is_the_sandboxs_text():
    """The child gives back exactly what the template makes (special tokens and the generation prompt)."""
    template = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content|tojson }}{% endfor %}" \
               "{% if add_generation_prompt %}<assistant>{% endif %}"
    assert render(template, [{"role": "user", "content": "é \x1b"}], bos_token="<s>") == \
        '<s><user>"é \\u001b"<assistant>'


def test_a_template_failure_names_the_template_file(tmp_path):
    from engine.models.tokenizer import CheckpointTokenizer

    checkpoint_maker().make_checkpoint(tmp_path / "ckpt", "llama", seed=1)
    (tmp_path / "ckpt" / "chat_template.jinja").write_text("{{ raise_exception('no user turns') }}")
    with pytest.raises(CheckpointError) as info:
        CheckpointTokenizer(tmp_path / "ckpt").chat_prompt("hi")
    assert str(info.value) == (f"{tmp_path / 'ckpt' / 'chat_template.jinja'}: the chat template refused the "
                               f"messages: no user turns; fix the template or write the prompt as plain text "
                               f"(chat = false)")


def test_the_cli_says_one_line_and_exits_2(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(LIARS["2^40 tensors"][0])
    run = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "mixed_load", "--headless", "--model", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "CBTUI_CACHE_DIR": str(tmp_path / "c")})
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and str(path) in run.stderr, run.stderr
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.partial"))
