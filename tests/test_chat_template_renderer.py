"""The long-lived renderer child of engine/models/chat_template.py: reused across renders, replaced
after a template kills it, safe from threads, and never left behind by its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engine.models import chat_template
from engine.models.chat_template import ChatTemplateError, render

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}" \
           "{% if add_generation_prompt %}<assistant>{% endif %}"
HANGS = "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"


@pytest.fixture(autouse=True)
def fresh_renderer():
    chat_template.close()
    yield
    chat_template.close()


def child_pid() -> int:
    assert chat_template._renderer is not None, "no renderer child is running"
    return chat_template._renderer.process.pid


def hello(n: int) -> str:
    return render(TEMPLATE, [{"role": "user", "content": f"hello {n}"}], bos_token="<s>")


def gone(pid: int) -> bool:
    """No such process, or a zombie whose parent (init here) has not reaped it yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.1)
    return False


def test_many_renders_reuse_one_child():
    assert hello(0) == "<s><user>hello 0<assistant>"
    pid = child_pid()
    for n in range(1, 50):
        assert hello(n) == f"<s><user>hello {n}<assistant>"
    assert child_pid() == pid


@pytest.mark.parametrize("template, words", [
    (HANGS, "took more than 2 s"),
    ("{{ ('x' * 1000000)|replace('x', 'y' * 10000) }}", "more than 512 MiB"),
])
def test_a_hostile_template_is_one_line_and_the_next_render_works(template, words, monkeypatch):
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 2.0)
    monkeypatch.setattr(chat_template, "RENDER_MEMORY", 512 << 20)
    assert hello(1) == "<s><user>hello 1<assistant>"
    with pytest.raises(ChatTemplateError) as info:
        render(template, [{"role": "user", "content": "hi"}])
    assert "\n" not in str(info.value) and words in str(info.value), info.value
    assert hello(2) == "<s><user>hello 2<assistant>"


def test_a_timed_out_child_is_killed_reaped_and_replaced(monkeypatch):
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 2.0)
    hello(0)
    pid = child_pid()
    with pytest.raises(ChatTemplateError, match="took more than 2 s"):
        render(HANGS, [])
    assert chat_template._renderer is None and wait_gone(pid, 1)
    hello(1)
    assert child_pid() != pid


def test_a_child_killed_from_outside_is_one_line_then_replaced(monkeypatch):
    hello(0)
    pid = child_pid()
    timer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
    timer.start()
    try:
        with pytest.raises(ChatTemplateError) as info:  # killed mid-render
            render(HANGS, [])
    finally:
        timer.cancel()
    assert str(info.value) == "the chat template's renderer stopped (signal 9, with memory capped at 1024 MiB)"
    hello(1)
    pid = child_pid()
    os.kill(pid, signal.SIGKILL)  # killed between renders: the next render just starts another
    assert wait_gone(pid, 5)
    # /proc shows the zombie a moment before waitpid can reap it: between renders means once it can
    deadline = time.monotonic() + 5
    while chat_template._renderer.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hello(2) == "<s><user>hello 2<assistant>"
    assert child_pid() != pid


def test_ctrl_c_at_the_terminal_is_the_parents_not_the_childs():
    hello(0)
    pid = child_pid()
    os.kill(pid, signal.SIGINT)  # as the terminal sends it to the whole foreground process group
    time.sleep(0.2)
    assert hello(1) == "<s><user>hello 1<assistant>" and child_pid() == pid


def test_a_child_that_grew_is_replaced(monkeypatch):
    monkeypatch.setattr(chat_template, "RETIRE_MEMORY", 0)  # every child has grown past 0 bytes
    pids = []
    for n in range(3):
        assert hello(n) == f"<s><user>hello {n}<assistant>"
        pids.append(chat_template._renderer)
    assert pids == [None, None, None]


def test_a_new_memory_cap_starts_a_new_child(monkeypatch):
    hello(0)
    pid = child_pid()
    monkeypatch.setattr(chat_template, "RENDER_MEMORY", 512 << 20)
    hello(1)
    assert child_pid() != pid and chat_template._renderer.memory == 512 << 20


def test_threads_rendering_at_once_get_their_own_text():
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            for n in range(first, first + 20):
                results[n] = hello(n)
        except BaseException as exc:  # handed to the test's thread to fail there
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(100 * t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 120
    assert all(text == f"<s><user>hello {n}<assistant>" for n, text in results.items())
    hello(0)
    assert chat_template._renderer is not None  # one child served them all, and is still up


def test_close_stops_and_reaps_the_child():
    hello(0)
    pid = child_pid()
    chat_template.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped already: it is not our child any more
    assert gone(pid)


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-render"])
def test_the_child_dies_with_its_parent(busy, tmp_path):
    """A parent killed with SIGKILL runs no atexit: the child sees EOF (idle) or its parent gone (busy)."""
    script = textwrap.dedent(f"""
        import sys, threading
        from engine.models import chat_template
        chat_template.RENDER_SECONDS = 60.0
        chat_template.render("{{{{ 1 }}}}", [])
        print(chat_template._renderer.process.pid, flush=True)
        if {busy}:
            threading.Thread(target=chat_template.render, args=({HANGS!r}, []), daemon=True).start()
        print("ready", flush=True)
        sys.stdin.read()
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pid = int(parent.stdout.readline())
        assert parent.stdout.readline() == "ready\n"
        time.sleep(0.5)  # the busy child is in its render
        assert not gone(pid)
    finally:
        parent.kill()
        parent.wait()
    outlived = not wait_gone(pid)
    if outlived:
        os.kill(pid, signal.SIGKILL)  # leave nothing behind, even when failing
    assert not outlived, f"renderer {pid} outlived its parent"


def test_a_forked_process_starts_its_own_child():
    hello(0)
    pid = child_pid()
    read, write = os.pipe()
    forked = os.fork()
    if forked == 0:  # the copy: its parent's child is not its own to talk to
        try:
            os.write(write, f"{hello(1)}|{child_pid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text, its_child = pipe.read().split("|")
    os.waitpid(forked, 0)
    assert text == "<s><user>hello 1<assistant>" and int(its_child) != pid
    assert hello(2) == "<s><user>hello 2<assistant>" and child_pid() == pid
