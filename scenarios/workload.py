"""Workloads: explicit [[requests]] and seeded [[generators]], turned into Engine.add_request calls.

Every random choice comes from a `random.Random` seeded by the scenario's top-level `seed` and
the entry's position, so a scenario always produces the same requests (and adding a generator
does not change the requests of the ones before it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.models.llama import ModelSpec
from engine.requests.stop_strings import check_stop

from .schema import Checker, is_int, show, toml_type

MAX_STEP = 100_000  # latest arrival (or deadline) step a scenario may name
MAX_REQUESTS = 10_000  # per scenario: keeps loading and listing instant
MAX_PRIORITY = 1_000_000
MAX_SEED = 2**32 - 1
MAX_TEMPERATURE = 100.0
# Below this, logits / temperature overflows float32 and the engine's sampler fails (softmax of inf).
MIN_TEMPERATURE = 0.01
MIN_TOP_P = 1e-6  # top_p is above 0: the nucleus always holds the most likely token
PRINTABLE = (32, 127)  # generated prompts are printable ASCII, so byte-level text shows them

REQUEST_KEYS = ("prompt", "chat", "prompt_tokens", "prompt_len", "max_new_tokens", "arrival_step", "priority",
                "temperature", "top_k", "top_p", "seed", "deadline_step", "stop")
ARRIVALS = ("all_at_once", "uniform", "poisson")
GENERATOR_KEYS = ("count", "prefix_len", "prompt_len", "max_new_tokens", "arrival", "arrival_start",
                  "arrival_span", "rate", "burst_size", "priority", "temperature", "top_k", "deadline_after")
# Keys that only make sense with one arrival process.
ARRIVAL_ONLY = {"arrival_span": "uniform", "rate": "poisson", "burst_size": "poisson"}
DIST_FORMS = "an integer (fixed), [low, high] (uniform), or a table {fixed = N}, {uniform = [low, high]}, " \
             "{choice = [a, b, ...]}"


@dataclass(frozen=True)
class IntDist:
    """An integer distribution: `values` to choose from uniformly, or a range low..high."""

    low: int
    high: int
    values: tuple[int, ...] = ()

    def sample(self, rng: random.Random) -> int:
        if self.values:
            return rng.choice(self.values)
        return rng.randint(self.low, self.high)


def parse_dist(check: Checker, table: dict, key: str, default, low: int, high: int) -> IntDist:
    """Reads N, [low, high], {fixed = N}, {uniform = [low, high]} or {choice = [...]}."""
    value = table.get(key, default)
    where = f"{key}"
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in ("fixed", "uniform", "choice"):
            check.fail(key, f"a distribution table has exactly one key: fixed, uniform or choice; "
                            f"got {show(value)}")
        form, value = next(iter(value.items()))
        where = f"{key}.{form}"
        if form == "fixed":
            check.check_int(value, where, low, high)
            return IntDist(value, value)
        if form == "choice":
            if not isinstance(value, list) or not value:
                check.fail(where, f"must be a non-empty array of integers, got {toml_type(value)} {show(value)}")
            for v in value:
                check.check_int(v, where, low, high)
            return IntDist(min(value), max(value), tuple(value))
        if not isinstance(value, list):  # uniform: only the [low, high] form below
            check.fail(where, f"must be [low, high], got {toml_type(value)} {show(value)}")
    if is_int(value):
        check.check_int(value, where, low, high)
        return IntDist(value, value)
    if isinstance(value, list) and len(value) == 2 and all(is_int(v) for v in value):
        lo, hi = value
        check.check_int(lo, where, low, high)
        check.check_int(hi, where, low, high)
        if lo > hi:
            check.fail(where, f"[low, high] needs low <= high, got {show(value)}")
        return IntDist(lo, hi)
    check.fail(where, f"must be {DIST_FORMS}; got {toml_type(value)} {show(value)}")


def _fits_context(check: Checker, key: str, prompt_len: int, max_new: int, spec: ModelSpec,
                  block_need) -> None:
    total = prompt_len + max_new
    if total > spec.max_context:
        check.fail(key, f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new}) = {total} exceeds "
                        f"the context of model {spec.name!r} ({spec.max_context}); shorten the prompt or "
                        f"lower max_new_tokens")
    problem = block_need(total)
    if problem:
        check.fail(key, problem)


def prompt_size(prompt: str | list[int]) -> int:
    """Tokens a prompt takes at most: its ids, or a text's UTF-8 bytes (what the byte tokenizer makes;
    a checkpoint's tokenizer makes fewer, plus perhaps a BOS: add_request checks the exact count)."""
    return len(prompt.encode("utf-8")) if isinstance(prompt, str) else len(prompt)


def parse_request(check: Checker, spec_table: dict, rng: random.Random, model: ModelSpec,
                  block_need) -> dict:
    """One [[requests]] entry -> keyword arguments of Engine.add_request."""
    check.keys(spec_table, REQUEST_KEYS)
    given = [k for k in ("prompt", "prompt_tokens", "prompt_len") if k in spec_table]
    if len(given) != 1:
        what = "none" if not given else ", ".join(given)
        check.fail("prompt", f"give exactly one of prompt (text), prompt_tokens (array of token ids) or "
                             f"prompt_len (random printable tokens); got {what}")
    max_len = model.max_context - 1
    prompt: str | list[int]
    if "prompt" in spec_table:
        if isinstance(spec_table["prompt"], list):
            check.fail("prompt", "is text; write token ids as prompt_tokens = [...]")
        # Kept as text: the engine's tokenizer encodes it (bytes, or a checkpoint's tokenizer.json).
        prompt = check.string(spec_table, "prompt", max_len=max_len)
        if not prompt:
            check.fail("prompt", "is empty; give at least one character")
    elif "prompt_tokens" in spec_table:
        prompt = spec_table["prompt_tokens"]
        if not isinstance(prompt, list) or not prompt:
            check.fail("prompt_tokens", f"must be a non-empty array of token ids, got "
                                        f"{toml_type(prompt)} {show(prompt)}")
        if len(prompt) > max_len:
            check.fail("prompt_tokens", f"has {len(prompt)} tokens; model {model.name!r} allows at most {max_len}")
        for t in prompt:
            if is_int(t) and t >= model.vocab_size:  # ids of another model's vocabulary: say which one runs
                check.fail("prompt_tokens", f"must be an integer from 0 to {model.vocab_size - 1}, got {t}: model "
                                            f"{model.name!r} has a vocabulary of {model.vocab_size} (--model picks "
                                            f"the model whose ids these are)")
            check.check_int(t, "prompt_tokens", 0, model.vocab_size - 1)
        prompt = list(prompt)
    else:
        n = check.integer(spec_table, "prompt_len", None, 1, max_len)
        prompt = [rng.randrange(*PRINTABLE) for _ in range(n)]
    if "chat" in spec_table and "prompt" not in spec_table:
        check.fail("chat", "applies to a text prompt (prompt = \"...\"); remove it or write the prompt as text")
    max_new = check.integer(spec_table, "max_new_tokens", 16, 1, model.max_context - 1)
    chat = check.boolean(spec_table, "chat", False)
    # A chat template adds its own tokens, counted when the engine encodes the prompt.
    _fits_context(check, "prompt", prompt_size(prompt), max_new, model, block_need)
    kwargs = dict(prompt=prompt, max_new_tokens=max_new,
                  arrival_step=check.integer(spec_table, "arrival_step", 0, 0, MAX_STEP),
                  priority=check.integer(spec_table, "priority", 0, -MAX_PRIORITY, MAX_PRIORITY))
    if "temperature" in spec_table:
        kwargs["temperature"] = _temperature(check, spec_table)
    if "top_k" in spec_table:
        kwargs["top_k"] = check.integer(spec_table, "top_k", 0, 0, model.vocab_size)
    if "top_p" in spec_table:
        kwargs["top_p"] = check.number(spec_table, "top_p", 1.0, MIN_TOP_P, 1.0)
    if "stop" in spec_table:
        try:
            kwargs["stop"] = list(check_stop(spec_table["stop"]))
        except ValueError as exc:
            check.fail("stop", str(exc).removeprefix("stop="))
    if "seed" in spec_table:
        kwargs["seed"] = check.integer(spec_table, "seed", 0, 0, MAX_SEED)
    if "deadline_step" in spec_table:
        kwargs["deadline_step"] = check.integer(spec_table, "deadline_step", 0, 0, MAX_STEP)
    if chat:
        kwargs["chat"] = True  # Scenario.build_engine applies the checkpoint's chat template
    return kwargs


def _temperature(check: Checker, table: dict) -> float:
    """0 means greedy; otherwise sampling with a temperature from MIN_TEMPERATURE up."""
    value = check.number(table, "temperature", 0.0, 0.0, MAX_TEMPERATURE)
    if 0 < value < MIN_TEMPERATURE:
        check.fail("temperature", f"{value} is too small to sample with; use 0 (greedy) or a number from "
                                  f"{MIN_TEMPERATURE} to {MAX_TEMPERATURE}")
    return value


def _arrival_steps(check: Checker, gen: dict, count: int, rng: random.Random) -> list[int]:
    arrival = check.choice(gen, "arrival", "all_at_once", ARRIVALS)
    for key, needs in ARRIVAL_ONLY.items():
        if key in gen and arrival != needs:
            check.fail(key, f"only applies to arrival = {needs!r} (this generator has arrival = {arrival!r})")
    start = check.integer(gen, "arrival_start", 0, 0, MAX_STEP)
    if arrival == "all_at_once":
        return [start] * count
    if arrival == "uniform":
        if "arrival_span" not in gen:
            check.fail("arrival_span", "is required with arrival = 'uniform': the number of steps over "
                                       "which arrivals spread (an integer >= 0)")
        span = check.integer(gen, "arrival_span", 0, 0, MAX_STEP - start)
        return sorted(start + rng.randint(0, span) for _ in range(count))
    # Poisson bursts: burst starts are a Poisson process with `rate` bursts per step (exponential
    # gaps), the first at arrival_start; each burst brings burst_size requests at once.
    if "rate" not in gen:
        check.fail("rate", "is required with arrival = 'poisson': mean bursts per step, from 0.001 to 100")
    rate = check.number(gen, "rate", 1.0, 0.001, 100.0)
    burst = parse_dist(check, gen, "burst_size", 1, 1, MAX_REQUESTS)
    steps: list[int] = []
    t = float(start)
    while len(steps) < count:
        if t > MAX_STEP:
            check.fail("rate", f"{rate} is too low for {count} requests: arrivals would run past step "
                               f"{MAX_STEP}; raise rate or burst_size")
        steps.extend([int(t)] * min(burst.sample(rng), count - len(steps)))
        t += rng.expovariate(rate)
    return steps


def generate(check: Checker, gen: dict, rng: random.Random, model: ModelSpec, block_need) -> list[dict]:
    """One [[generators]] entry -> `count` requests (keyword arguments of Engine.add_request)."""
    check.keys(gen, GENERATOR_KEYS)
    if "count" not in gen:
        check.fail("count", f"is required: how many requests this generator makes (1 to {MAX_REQUESTS})")
    count = check.integer(gen, "count", 1, 1, MAX_REQUESTS)
    ctx = model.max_context - 1
    # A prefix every request of the generator shares (a system prompt), drawn once, before prompt_len.
    prefix_len = check.integer(gen, "prefix_len", 0, 0, ctx - 1)
    prompt_len = parse_dist(check, gen, "prompt_len", [8, 32], 1, ctx)
    max_new = parse_dist(check, gen, "max_new_tokens", [4, 16], 1, ctx)
    # Check the largest request the distributions can produce, so failures name the generator.
    _fits_context(check, "prompt_len", prefix_len + prompt_len.high, max_new.high, model, block_need)
    priority = parse_dist(check, gen, "priority", 0, -MAX_PRIORITY, MAX_PRIORITY)
    extra = {}
    if "temperature" in gen:
        extra["temperature"] = _temperature(check, gen)
    if "top_k" in gen:
        extra["top_k"] = check.integer(gen, "top_k", 0, 0, model.vocab_size)
    # An SLA relative to arrival: each request's deadline_step is its arrival step + deadline_after.
    deadline_after = check.integer(gen, "deadline_after", None, 0, MAX_STEP) if "deadline_after" in gen else None
    arrivals = _arrival_steps(check, gen, count, rng)
    prefix = [rng.randrange(*PRINTABLE) for _ in range(prefix_len)]
    out = []
    for arrival in arrivals:
        n = prompt_len.sample(rng)
        out.append(dict(prompt=prefix + [rng.randrange(*PRINTABLE) for _ in range(n)],
                        max_new_tokens=max_new.sample(rng), arrival_step=arrival,
                        priority=priority.sample(rng), **extra))
        if deadline_after is not None:
            out[-1]["deadline_step"] = arrival + deadline_after
    return out
