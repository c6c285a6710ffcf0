"""A request body, checked field by field, as one Generation for the engine.

What the server does not do is refused (400, naming the field), never silently ignored: several
choices (n > 1), log probabilities, tools, penalties, logit biases, response formats, echo,
suffix. Unknown fields are refused as OpenAI refuses them. temperature follows OpenAI's default
(1) and range (0..2); below 0.001 it is greedy, which is what makes outputs comparable with a run
alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.requests.stop_strings import check_stop

from .errors import APIError, bad_request

COMPLETION_DEFAULT_MAX_TOKENS = 16  # as OpenAI's completions endpoint
CHAT_DEFAULT_MAX_TOKENS = 512  # OpenAI's chat has none (the rest of the context); capped for a teaching engine
GREEDY_BELOW = 1e-3  # the engine's smallest temperature

# Fields accepted when they ask for what the server does anyway (their neutral value), else refused.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "best_of": (None, 1), "logprobs": (None, False, 0), "top_logprobs": (None, 0),
    "echo": (None, False), "suffix": (None, ""), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "tools": (None, []), "functions": (None, []),
    "tool_choice": (None, "none"), "function_call": (None, "none"), "parallel_tool_calls": (None, False, True),
    "response_format": (None, {"type": "text"}), "audio": (None,), "modalities": (None, ["text"]),
    "prediction": (None,), "reasoning_effort": (None,), "web_search_options": (None,),
}
IGNORED = ("user", "metadata", "store", "service_tier")  # bookkeeping fields that change no output
COMMON = ("model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop")
COMPLETION_FIELDS = frozenset((*COMMON, "prompt", *NEUTRAL, *IGNORED))
CHAT_FIELDS = frozenset((*COMMON, "messages", "max_completion_tokens", *NEUTRAL, *IGNORED))


@dataclass
class Generation:
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage counts


def check_fields(body: Any, allowed: frozenset[str]) -> dict:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name in body:
        if name not in allowed:
            raise bad_request(f"Unrecognized request argument supplied: {name}", name, "unrecognized_argument")
    for name, neutral in NEUTRAL.items():
        value = body.get(name)
        if value is not None and not any(value == n and type(value) is type(n) for n in neutral if n is not None):
            raise bad_request(f"{name}={_short(value)} is not supported by this server (cbtui api): leave it out",
                              name, "unsupported_parameter")
    return body


def check_model(body: dict, served: str, aliases: tuple[str, ...] = ()) -> None:
    model = body.get("model")
    if model is None:
        raise bad_request(f"you must provide a model parameter (this server serves {served!r})", "model")
    if not isinstance(model, str):
        raise bad_request("model must be a string", "model")
    if model != served and model not in aliases:
        raise APIError(404, f"The model {_short(model)} does not exist; this server serves {served!r} "
                            f"(GET /v1/models)", "model", "model_not_found")


def generation(body: dict, prompt: list[int], context: int, default_max_tokens: int,
               max_tokens_field: str = "max_tokens") -> Generation:
    """The sampling settings of `body` for `prompt`, checked against the model's context."""
    max_tokens = body.get(max_tokens_field, body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = max(1, min(default_max_tokens, context - len(prompt)))
    elif type(max_tokens) is not int or max_tokens < 1:
        raise bad_request(f"{max_tokens_field}={_short(max_tokens)} must be an integer >= 1", max_tokens_field)
    if len(prompt) + max_tokens > context:
        raise bad_request(f"This model's maximum context length is {context} tokens; the prompt has {len(prompt)} "
                          f"tokens and {max_tokens_field} asks for {max_tokens} more ({len(prompt) + max_tokens}); "
                          f"shorten the prompt or lower {max_tokens_field}", "messages" if "messages" in body
                          else "prompt", "context_length_exceeded")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    seed = body.get("seed")
    if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
        raise bad_request(f"seed={_short(seed)} must be an integer in 0..2**63-1", "seed")
    try:
        stop = check_stop(body.get("stop"))
    except ValueError as exc:
        raise bad_request(str(exc), "stop") from None
    stream = body.get("stream", False)
    if stream is not None and type(stream) is not bool:
        raise bad_request("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}
                                or type(options.get("include_usage", False)) is not bool):
        raise bad_request('stream_options must be {"include_usage": true or false}', "stream_options")
    if options is not None and not stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")
    return Generation(prompt, max_tokens, 0.0 if temperature < GREEDY_BELOW else temperature,
                      max(top_p, 1e-9), seed, stop, bool(stream), bool(options and options.get("include_usage")))


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if type(value) not in (int, float) or not low <= value <= high:  # also refuses NaN and bools
        raise bad_request(f"{name}={_short(value)} must be a number in {low:g}..{high:g}", name)
    return float(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
