"""One request's whole text so far (the `d` screen): its prompt and its output decoded by the
model's own tokenizer, its state and its token counts, read on the engine thread between steps.

A record carries only the output's tail, so the whole text comes from the engine. A finished
request keeps its output but not its prompt (engine/requests/finished.py): the prompt then comes
from what the run was given (`prompt_hint`: the scenario's request, or one typed with `a`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .added_requests import prompt_ids


@dataclass(frozen=True)
class RequestText:
    request_id: int
    step: int | None  # the text as it stood after this step (None: before the first)
    state: str
    prompt: str | None  # None: not kept (a finished request whose prompt the run was not given)
    output: str
    prompt_tokens: int
    computed: int | None  # tokens of prompt + output whose KV is in the cache (None: finished, none kept)
    generated: int
    max_new_tokens: int
    whole: bool = True  # False: a recording's output tail only


def given_prompts(requests) -> dict[int, dict]:
    """Request id -> the keywords a scenario's workload gave Engine.add_request, ids assigned as the
    engine assigns them (in order, after any id given explicitly)."""
    given, next_id = {}, 0
    for spec in requests:
        if not isinstance(spec, dict):
            continue
        rid = spec.get("request_id")
        rid = next_id if not isinstance(rid, int) else rid
        next_id = max(next_id, rid) + 1
        given[rid] = spec
    return given


def hint_ids(engine, hint: dict | None) -> list[int] | None:
    """A request's prompt ids from its Engine.add_request keywords (a scenario's `chat` prompt goes
    through the chat template as the loader sends it)."""
    if hint is None:
        return None
    prompt = hint.get("prompt")
    if isinstance(prompt, str):
        return prompt_ids(engine, prompt)[0] if hint.get("chat") else list(engine.tokenizer.encode(prompt))
    return list(prompt) if isinstance(prompt, (list, tuple)) else None


def request_text(engine, request_id: int, prompt_hint: dict | None = None) -> RequestText:
    """ValueError when the engine has no such request yet (one line)."""
    if request_id not in engine.requests:
        raise ValueError(f"request {request_id} is not in the run yet")
    r = engine.requests[request_id]
    prompt = getattr(r, "prompt", None)
    ids = list(prompt) if prompt is not None else hint_ids(engine, prompt_hint)
    decode = engine.tokenizer.decode
    computed = None if r.is_finished else r.num_computed
    prompt_tokens = len(prompt) if prompt is not None else r.prompt_len
    return RequestText(request_id, engine.step_index - 1 if engine.step_index else None, r.state.value,
                       None if ids is None else decode(ids), decode(list(r.output)), prompt_tokens, computed,
                       len(r.output), r.max_new_tokens)
