"""What a request asks the model to continue, as token ids: a completion's prompt, or a chat's
messages rendered by the model's own chat template (jinja2's sandbox, engine/models/chat_template.py).

The random presets have no template: their chat prompt is the messages as `role: content` lines
and an `assistant:` line, as bytes (the answer is noise either way; it lets the presets, and so the
tests, exercise the chat endpoint)."""

from __future__ import annotations

from typing import Any

from engine.models.checkpoint import CheckpointError
from engine.models.tokenizer import Tokenizer

from .errors import bad_request

ROLES = ("system", "developer", "user", "assistant")


def completion_prompt(tokenizer: Tokenizer, prompt: Any, vocab_size: int) -> list[int]:
    """A string, a list of one string, or a list of token ids (as OpenAI accepts)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("prompt is empty; give some text", "prompt")
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        if not all(0 <= t < vocab_size for t in prompt):
            raise bad_request(f"prompt holds a token id outside the vocabulary (0..{vocab_size - 1})", "prompt")
        return list(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad_request("one prompt per request: a batch of prompts (a list of strings) is not supported; "
                          "send one request each (they are batched in the engine anyway)", "prompt")
    raise bad_request("prompt must be a string or a list of token ids", "prompt")


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """The messages, checked: roles OpenAI knows, content a string or a list of text parts."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content} objects", "messages")
    checked = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object with role and content", where)
        role, content = message.get("role"), message.get("content")
        if role == "tool" or "tool_calls" in message or "function_call" in message:
            raise bad_request(f"{where}: tool messages and tool calls are not supported", where)
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad_request(f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                  f"supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad_request(f"{where}.content must be a string", f"{where}.content")
        checked.append({"role": "system" if role == "developer" else role, "content": content})
    return checked


def chat_prompt(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    render = getattr(tokenizer, "chat_messages_prompt", None)
    if render is None:  # a random preset: plain lines, as bytes
        lines = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return tokenizer.encode(lines + "assistant:")
    try:
        return render(messages)
    except CheckpointError as exc:  # no template, or one that fails on these messages
        raise bad_request(f"{exc}; use /v1/completions with a plain prompt", "messages") from None
