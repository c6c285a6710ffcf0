"""Seeded benchmark workloads: every system gets exactly the same prompts and output lengths."""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.models.source import model_spec

# name -> (requests, prompt length range, output length range); all ranges inclusive.
WORKLOADS = {
    "anchor": (512, (32, 1024), (128, 128)),
    "varied": (256, (32, 1024), (16, 256)),
    # Prompts that repeat a short random pattern: where prompt lookup (speculative ngram) can help.
    "repetitive": (256, (32, 256), (128, 128)),
    "shared_prefix": (256, (16, 256), (16, 128)),  # prompt lengths after the shared prefix
}
REPETITIVE = {"repetitive"}
PATTERN = (2, 8)  # pattern lengths of a repetitive prompt
# name -> (prefix length, share of the requests behind it): system prompts that requests share.
SHARED_PREFIXES = {"shared_prefix": ((768, 0.75), (256, 0.25))}
STATIC_BATCH = 64  # static batch size of the full-scale workloads (ours and Hugging Face's)


@dataclass
class Workload:
    name: str
    model: str  # engine preset, or a checkpoint directory
    prompts: list[list[int]]
    max_new_tokens: list[int]
    scale: float
    static_batch_size: int
    seed: int
    shared_prefixes: tuple[int, ...] = ()  # lengths of the prefixes the prompts share (empty: none)
    # Tokens that end a request where it samples one, as a chat client's requests end (the model's
    # end of sequence). Empty: every request generates exactly its max_new_tokens.
    stop_ids: tuple[int, ...] = ()

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return sum(self.max_new_tokens)

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model, "requests": self.num_requests, "scale": self.scale,
                "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "prompt_len": [min(map(len, self.prompts)), max(map(len, self.prompts))],
                "new_tokens": [min(self.max_new_tokens), max(self.max_new_tokens)],
                "static_batch_size": self.static_batch_size, "seed": self.seed,
                "shared_prefixes": list(self.shared_prefixes), "stop_ids": list(self.stop_ids)}


def make_workload(name: str, scale: float = 1.0, model: str = "small", seed: int = 0,
                  prompt_range: tuple[int, int] | None = None, output_range: tuple[int, int] | None = None) -> Workload:
    """`scale` shrinks the number of requests and the static batch together (lengths stay as is).

    prompt_range / output_range replace the workload's length ranges (small test workloads).
    """
    if name not in WORKLOADS:
        raise ValueError(f"workload={name!r} is not known; choose one of: {', '.join(WORKLOADS)}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale={scale} is out of range; it must be in (0, 1]")
    spec = model_spec(model)  # a preset, or a checkpoint's config.json (CheckpointError: one line)
    count, prompts_in, outputs_in = WORKLOADS[name]
    (p_lo, p_hi), (o_lo, o_hi) = prompt_range or prompts_in, output_range or outputs_in
    if p_hi + o_hi > spec.max_context:  # a checkpoint with a short context: prompts shortened to fit
        p_hi = max(1, spec.max_context - o_hi)
        p_lo = min(p_lo, p_hi)
        if p_hi + o_hi > spec.max_context:
            raise ValueError(f"model {spec.name!r}: its context ({spec.max_context} tokens) cannot hold "
                             f"{o_hi} new tokens; use a model with a longer context")
    n = max(2, round(count * scale))
    vocab = spec.vocab_size
    rng = random.Random(f"{name}:{seed}")
    shared = SHARED_PREFIXES.get(name, ())
    prefixes = [[rng.randrange(vocab) for _ in range(length)] for length, _ in shared]
    prompts, outs = [], []
    for _ in range(n):
        head = rng.choices(prefixes, weights=[share for _, share in shared])[0] if prefixes else []
        length = rng.randint(p_lo, p_hi)
        if name in REPETITIVE:
            pattern = [rng.randrange(vocab) for _ in range(rng.randint(*PATTERN))]
            prompts.append((pattern * (length // len(pattern) + 1))[:length])
        else:
            prompts.append(head + [rng.randrange(vocab) for _ in range(length)])
        outs.append(rng.randint(o_lo, o_hi))
    static = max(2, round(STATIC_BATCH * scale))
    return Workload(name, model, prompts, outs, scale, static, seed, tuple(length for length, _ in shared))


def warmup_workload(model: str, seed: int = 1) -> Workload:
    """A few short requests that touch prefill, mixed and decode-only steps (compiles, caches)."""
    rng = random.Random(f"warmup:{seed}")
    vocab = model_spec(model).vocab_size
    lengths = [17, 64, 200, 31, 128, 5, 90, 300]
    prompts = [[rng.randrange(vocab) for _ in range(n)] for n in lengths]
    return Workload("warmup", model, prompts, [8, 4, 12, 6, 8, 10, 3, 5], 1.0, 4, seed)
