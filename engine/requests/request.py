"""A request and its life cycle: waiting -> prefill -> decode -> finished (or preempted)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .stop_strings import StopStrings


class RequestState(str, Enum):
    PENDING = "pending"  # added, but its arrival step has not come yet
    WAITING = "waiting"  # arrived, holds no KV cache yet
    PREFILL = "prefill"  # admitted, prompt (or recompute) not fully in the cache
    DECODE = "decode"  # one new token per step
    PREEMPTED = "preempted"  # KV freed for lack of blocks; will recompute, keeps its tokens
    FINISHED = "finished"
    ABORTED = "aborted"  # stopped before its end (Engine.abort): its KV freed, its tokens kept


@dataclass(eq=False)  # a request is itself, not its field values: queue lookups compare by identity
class Request:
    """One generation request.

    The engine treats prompt and generated tokens as one sequence: `num_computed` counts the
    tokens whose keys and values are in the cache. A step feeds `(prompt + output)[num_computed:...]`;
    when the whole sequence is computed, the next token is sampled. That one rule covers
    chunked prefill, decode and recompute after preemption.
    """

    id: int
    prompt: list[int]
    max_new_tokens: int
    arrival_step: int = 0
    priority: int = 0
    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    deadline_step: int | None = None
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens whose probability reaches top_p
    stop: StopStrings | None = None  # strings that end the request once its text holds one
    output: list[int] = field(default_factory=list)
    num_computed: int = 0
    last_scheduled_step: int = -1
    kv_capacity: int = 0  # tokens the request's KV allocation can hold (scheduler bookkeeping)
    state: RequestState = RequestState.PENDING
    admitted_step: int | None = None
    first_token_step: int | None = None
    finished_step: int | None = None
    num_preemptions: int = 0
    cached_tokens: int = 0  # tokens of its latest admission shared from the prefix cache (not computed)
    first_token_time: float | None = None
    arrival_time: float | None = None
    finish_time: float | None = None
    drafts_proposed: int = 0  # speculative decoding: drafts verified for this request, in all
    drafts_accepted: int = 0  # and how many of them the target accepted

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    def token_slice(self, start: int, count: int) -> list[int]:
        """(prompt + output)[start:start + count] without building the concatenation (hot for decodes)."""
        prompt_len = len(self.prompt)
        if start >= prompt_len:
            return self.output[start - prompt_len:start - prompt_len + count]
        head = self.prompt[start:start + count]
        return head + self.output[:count - len(head)] if len(head) < count else head

    @property
    def remaining(self) -> int:
        """Tokens still to be fed to the model before the next sample."""
        return self.num_tokens - self.num_computed

    @property
    def is_decoding(self) -> bool:
        output = self.output  # hot: asked for every running request every step
        return bool(output) and len(self.prompt) + len(output) - self.num_computed == 1

    @property
    def prefill_pos(self) -> int:
        """How much of the prompt is in the cache (what the dashboard calls prompt progress)."""
        return min(self.num_computed, len(self.prompt))

    @property
    def is_finished(self) -> bool:
        return self.state is RequestState.FINISHED

    def phase(self) -> RequestState:
        """PREFILL or DECODE for an admitted request, from its token counts."""
        return RequestState.DECODE if self.is_decoding else RequestState.PREFILL
