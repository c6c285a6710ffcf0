"""Chat templates rendered without transformers: jinja2's immutable sandbox, set up as transformers
sets it up (trim_blocks, lstrip_blocks, loop controls, its `tojson`, `raise_exception`, `strftime_now`),
so the text, and so the ids, equal `apply_chat_template`'s.

A template comes from a file we did not write: the sandbox refuses Python internals (`__class__`,
`__globals__`...), ranges are capped, `*` cannot build huge strings or lists, loops draw from one
iteration budget, and the output stops at MAX_OUTPUT characters. Those are quick refusals, not a
bound: filters alone (`center(3e9)`, `replace`, `lipsum`, `~` in a loop, loops over a long string)
take gigabytes or hours. So `render` runs the template in a renderer child process: this file run
with `python -I ... --serve`, started on the first render and kept for the next ones (a spawn per
render cost 0.1-0.25 s), one JSON line in and one out per render, one render at a time (a lock).
Its address space is capped at RENDER_MEMORY; a render past RENDER_SECONDS, a crash, or an unreadable
answer kills it, and the next render starts a fresh one. It is also replaced when it holds more than
RETIRE_MEMORY after a render (Python keeps what a big render took), and it ends with its parent: on
EOF, or when a thread of it sees its parent gone. Every refusal is one ChatTemplateError line.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

MAX_OUTPUT = 1 << 20  # characters of rendered prompt
MAX_ITERATIONS = 1_000_000  # loop steps over ranges, in one render
MAX_SIZE = 1 << 20  # items or characters a `*` or `**` may make
RENDER_SECONDS = 10.0  # wall time for one render, a fresh child's start included
RENDER_MEMORY = 1 << 30  # the child's address space (Python and jinja2 take under 100 MB of it)
RETIRE_MEMORY = 128 << 20  # a child holding more resident memory than this is replaced after its render


class ChatTemplateError(ValueError):
    """A chat template that cannot be rendered: the message says why, in one line."""


@lru_cache(maxsize=8)
def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise ChatTemplateError(f"{left!r} ** {right!r} is too large for a chat template")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_SIZE:
                        raise ChatTemplateError(f"a chat template may not build {len(seq) * n} items with '*'")
            return super().call_binop(context, operator, left, right)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    budget = [MAX_ITERATIONS]

    def bounded_range(*args):
        steps = range(*args)
        if len(steps) > budget[0]:
            raise ChatTemplateError(f"the chat template loops more than {MAX_ITERATIONS} times")
        budget[0] -= len(steps)
        return steps

    def raise_exception(message):
        raise ChatTemplateError(f"the chat template refused the messages: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, range=bounded_range,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template), budget
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not parse ({_line(exc)})") from None


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def render(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
           **special_tokens: str | None) -> str:
    """The prompt text `template` makes of `messages` (bos_token=..., eos_token=... as the tokenizer
    names them), rendered in the renderer child, bounded in time and memory. Thread-safe: one render
    at a time."""
    global _renderer
    request = json.dumps({"template": template, "messages": messages, "add_generation_prompt": add_generation_prompt,
                          "special_tokens": special_tokens}) + "\n"
    with _lock:
        if _renderer is None or _renderer.memory != RENDER_MEMORY or _renderer.process.poll() is not None:
            _retire()
            _renderer = _Renderer()
        try:
            answer = _renderer.ask(request.encode(), RENDER_SECONDS)
        except ChatTemplateError:
            _retire()
            raise
        if answer["resident"] > RETIRE_MEMORY:  # Python keeps what a big render took: a fresh child gives it back
            _retire()
    if "error" in answer:
        raise ChatTemplateError(answer["error"])
    return answer["text"]


class _Renderer:
    """The renderer child: `python -I` this file with --serve, one JSON line in and one out per render."""

    def __init__(self) -> None:
        self.memory = RENDER_MEMORY  # -I: it imports nothing from the current directory or PYTHON* variables
        self.process = subprocess.Popen([sys.executable, "-I", __file__, "--serve", str(os.getpid()), str(self.memory)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def ask(self, request: bytes, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        assert self.process.stdin is not None and self.process.stdout is not None
        reply = b""
        try:
            self.process.stdin.write(request)
            self.process.stdin.flush()
            while not reply.endswith(b"\n"):  # os.read on the raw pipe: select sees all that is unread
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                    raise ChatTemplateError(f"the chat template took more than {seconds:g} s to render")
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                reply += chunk
        except BrokenPipeError:
            pass
        if reply.endswith(b"\n"):
            try:
                answer = json.loads(reply)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and ("text" in answer or "error" in answer) and "resident" in answer:
                return answer
            raise ChatTemplateError("the chat template's renderer gave an unreadable answer")
        try:  # its stdout closed: it is ending
            code = self.process.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise ChatTemplateError("the chat template's renderer closed its output") from None
        died = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise ChatTemplateError(f"the chat template's renderer stopped ({died}, with memory capped at "
                                f"{self.memory >> 20} MiB)")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()  # reaped: no zombie
        for pipe in (self.process.stdin, self.process.stdout):
            assert pipe is not None
            with contextlib.suppress(OSError):  # unflushed bytes to a dead child
                pipe.close()


_lock = threading.Lock()
_renderer: _Renderer | None = None


def _retire() -> None:
    global _renderer
    if _renderer is not None:
        _renderer.close()
        _renderer = None


def close() -> None:
    """Stops the renderer child (the next render starts a fresh one); also run at exit."""
    with _lock:
        _retire()


def _forget_after_fork() -> None:
    """A forked copy of this process renders with a child of its own: the one it inherited is its parent's."""
    global _lock, _renderer
    _lock, _renderer = threading.Lock(), None


atexit.register(_retire)  # not close(): a daemon thread may hold the lock, mid-render, at exit
os.register_at_fork(after_in_child=_forget_after_fork)


def render_here(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                **special_tokens: str | None) -> str:
    """`render` in this process, with the sandbox's quick refusals but no bound on time or memory."""
    import jinja2
    from jinja2.sandbox import SecurityError

    compiled, budget = _compile(template)
    budget[0] = MAX_ITERATIONS
    out: list[str] = []
    size = 0
    try:
        for piece in compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                                       documents=None, **special_tokens):
            size += len(piece)
            if size > MAX_OUTPUT:
                raise ChatTemplateError(f"the chat template's output passed {MAX_OUTPUT} characters")
            out.append(piece)
    except ChatTemplateError:
        raise
    except MemoryError:
        raise ChatTemplateError(f"the chat template needed more than {RENDER_MEMORY >> 20} MiB to render") from None
    except SecurityError as exc:
        raise ChatTemplateError(f"the chat template reached for something unsafe ({_line(exc)})") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError,
            RecursionError, OverflowError) as exc:
        raise ChatTemplateError(f"the chat template failed ({type(exc).__name__}: {_line(exc)})") from None
    return "".join(out)


def _resident_bytes() -> int:
    """This process's resident memory now (ru_maxrss would not do: Linux carries it over from the forked
    parent across exec); 0 where there is no /proc."""
    try:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _serve(parent: int, memory: int) -> None:
    """The renderer child's loop: a request per stdin line, its answer per stdout line as {"text": ...} or
    {"error": ...} with "resident", the child's resident bytes now. Ends on EOF, or when the parent is gone
    (a thread watches getppid: PR_SET_PDEATHSIG would fire when the parent's *thread* that started it ends)."""
    import resource
    import signal

    global RENDER_MEMORY
    RENDER_MEMORY = memory  # the parent's setting, for the limit and the messages
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at the terminal is the parent's; we end with it

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            answer: dict[str, Any] = {"text": render_here(request["template"], request["messages"],
                                                          request["add_generation_prompt"],
                                                          **request["special_tokens"])}
        except ChatTemplateError as exc:
            answer = {"error": str(exc)}
        answer["resident"] = _resident_bytes()
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    _serve(int(sys.argv[2]), int(sys.argv[3]))
