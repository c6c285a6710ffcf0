"""Chat templates rendered without transformers: jinja2's immutable sandbox, set up as transformers
sets it up (trim_blocks, lstrip_blocks, loop controls, its `tojson`, `raise_exception`, `strftime_now`),
so the text, and so the ids, equal `apply_chat_template`'s.

A template comes from a file we did not write: the sandbox refuses Python internals (`__class__`,
`__globals__`...), ranges are capped, `*` cannot build huge strings or lists, loops draw from one
iteration budget, and the output stops at MAX_OUTPUT characters. Those are quick refusals, not a
bound: filters alone (`center(3e9)`, `replace`, `lipsum`, `~` in a loop, loops over a long string)
take gigabytes or hours. So `render` runs the template in a child process (this file, run as a
script) whose address space is capped at RENDER_MEMORY and which is killed after RENDER_SECONDS.
Every refusal is one ChatTemplateError line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from functools import lru_cache
from typing import Any

MAX_OUTPUT = 1 << 20  # characters of rendered prompt
MAX_ITERATIONS = 1_000_000  # loop steps over ranges, in one render
MAX_SIZE = 1 << 20  # items or characters a `*` or `**` may make
RENDER_SECONDS = 10.0  # wall time for one render, the child's start included
RENDER_MEMORY = 1 << 30  # the child's address space (Python and jinja2 take under 100 MB of it)


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
    names them), rendered in a child process bounded in time and memory."""
    request = json.dumps({"template": template, "messages": messages, "add_generation_prompt": add_generation_prompt,
                          "special_tokens": special_tokens, "memory": RENDER_MEMORY})
    try:  # -I: the child imports nothing from the current directory or PYTHON* variables
        child = subprocess.run([sys.executable, "-I", __file__], input=request, capture_output=True, text=True,
                               encoding="utf-8", timeout=RENDER_SECONDS)
    except subprocess.TimeoutExpired:  # run() has killed it
        raise ChatTemplateError(f"the chat template took more than {RENDER_SECONDS:g} s to render") from None
    try:
        answer = json.loads(child.stdout)
    except ValueError:
        died = f"signal {-child.returncode}" if child.returncode < 0 else f"exit code {child.returncode}"
        raise ChatTemplateError(f"the chat template's renderer stopped ({died}, with memory capped at "
                                f"{RENDER_MEMORY >> 20} MiB)") from None
    if "error" in answer:
        raise ChatTemplateError(answer["error"])
    return answer["text"]


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


def _child() -> None:
    """Renders the request on stdin; its answer on stdout as {"text": ...} or {"error": ...}."""
    import resource

    global RENDER_MEMORY
    request = json.loads(sys.stdin.read())
    RENDER_MEMORY = request["memory"]  # the parent's setting, for the limit and the messages
    resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY, RENDER_MEMORY))
    try:
        text = render_here(request["template"], request["messages"], request["add_generation_prompt"],
                           **request["special_tokens"])
        answer = {"text": text}
    except ChatTemplateError as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    _child()
