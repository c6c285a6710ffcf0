"""A request typed into a running dashboard (`a`): how its text becomes the prompt, and what the
session keeps of it so a fork (`f`) can run the same workload again.

Runs on the engine thread (EngineController.between_steps): the tokenizer and the request table
are the engine's. A real model with a chat template gets the text as one user message through it,
as the `chat` scenario's prompts do; a random preset, or a checkpoint without a template, gets the
text as it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AddedRequest:
    """What `Engine.add_request` was given, so a fork can give it again at the same step."""

    request_id: int
    prompt: tuple[int, ...]  # the ids, chat template applied where there is one
    max_new_tokens: int
    arrival_step: int  # the step it joins at (the engine's next step when it was added)
    chat: bool  # whether the model's chat template wrapped the text

    def spec(self) -> dict:
        """Keyword arguments of Engine.add_request (a scenario's request) that queue it again."""
        return dict(prompt=list(self.prompt), max_new_tokens=self.max_new_tokens, arrival_step=self.arrival_step,
                    request_id=self.request_id)


def prompt_ids(engine, text: str) -> tuple[list[int], bool]:
    """The text as the model's prompt, and whether its chat template was used."""
    tokenizer = engine.tokenizer
    template = getattr(tokenizer, "chat_template", None)
    if template is not None and template() is not None:
        return list(tokenizer.chat_prompt(text)), True
    return list(tokenizer.encode(text)), False


def add_typed_request(engine, text: str, max_new_tokens: int) -> AddedRequest:
    """Queues `text` for the next step; ValueError (one line) for an empty prompt, or one that with
    its max tokens is longer than the model's context or the KV pool, and then nothing changes."""
    if not text.strip():
        raise ValueError("the prompt is empty: type some text")
    ids, chat = prompt_ids(engine, text)
    request_id = engine.add_request(ids, max_new_tokens=max_new_tokens)
    return AddedRequest(request_id, tuple(ids), max_new_tokens, engine.step_index, chat)
