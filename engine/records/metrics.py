"""MetricsCollector: per-step stats and per-request latencies, computed from StepRecords only.

Feed it every record in order (`observe`). It needs nothing else from the engine, so it works the same
live, on a recording, or on hand-made records.

Time has two units:
- steps: a token sampled in step k "arrives" at step k; a request that arrives at step a and gets its
  first token at step f has TTFT f - a steps (the same convention as RequestView.ttft_steps).
- seconds of engine time: the sum of the observed steps' wall_time_s. Step k starts when step k-1
  ended and a token sampled in step k is ready at the end of step k; a request's arrival is the start
  of its arrival step. Pauses between steps (a paused dashboard) are not counted, so the numbers
  say what the engine cost, not how long a user watched. A step that was not observed leaves the
  seconds of the requests that depend on it as None.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import pairwise

from .stats import describe
from .types import StepRecord


@dataclass(slots=True)
class StepStats:
    step: int
    budget: int
    decode_tokens: int
    prefill_tokens: int
    unused_tokens: int
    output_tokens: int  # tokens sampled this step (a prefill chunk that ends a prompt samples one too)
    running: int
    waiting: int
    finished: int  # requests that finished this step
    preempted: int
    start_s: float  # engine time when the step started
    wall_time_s: float
    tokens_per_s: float  # (decode + prefill) / wall time; 0 for a zero-length step
    output_tokens_per_s: float
    memory_source: str
    allocated_bytes: int
    reserved_bytes: int
    rss_bytes: int
    kv_blocks_used: int
    # Speculative decoding: drafts verified and accepted, decodes run and those that speculated
    draft_tokens: int = 0
    accepted_tokens: int = 0
    decodes: int = 0
    speculating: int = 0


@dataclass(slots=True)
class RequestMetrics:
    id: int
    state: str
    prompt_len: int
    generated: int
    num_preemptions: int
    arrival_step: int  # the step it arrived in (see observe for requests added mid-run)
    first_token_step: int | None
    finished_step: int | None
    ttft_steps: int | None
    tpot_steps: float | None  # mean steps per output token after the first (= mean inter-token gap)
    max_itl_steps: int | None  # the longest stall between two tokens (e.g. a preemption)
    e2e_steps: int | None  # arrival to the step of the last token; None until finished
    ttft_s: float | None
    tpot_s: float | None
    max_itl_s: float | None
    e2e_s: float | None
    deadline_step: int | None = None  # the step its last token was due by
    sla_met: bool | None = None  # True: finished by its deadline; False: missed it; None: no deadline, or not yet due
    itl_steps: list[int] = field(default_factory=list)  # gap before each token after the first
    itl_s: list[float] = field(default_factory=list)
    drafts_proposed: int = 0  # speculative decoding
    drafts_accepted: int = 0
    acceptance_rate: float | None = None  # accepted / proposed; None when nothing was proposed


@dataclass(slots=True)
class _Track:
    """What the collector remembers about one request between records."""

    id: int
    state: str
    prompt_len: int
    generated: int
    num_preemptions: int
    arrival_step: int
    token_steps: list[int] = field(default_factory=list)
    token_ends: list[float] = field(default_factory=list)
    finished_step: int | None = None
    drafts_proposed: int = 0
    drafts_accepted: int = 0
    deadline_step: int | None = None


def sla_met(deadline_step: int | None, finished_step: int | None, now: int | None) -> bool | None:
    """Whether a request met its deadline (its last token sampled at or before deadline_step): True or
    False once that is known (finished, or still running past the deadline at step `now`), else None."""
    if deadline_step is None:
        return None
    if finished_step is not None:
        return finished_step <= deadline_step
    return False if now is not None and now > deadline_step else None


PREFIX_COUNTS = ("hit_blocks", "hit_tokens", "lookup_blocks", "lookup_tokens", "new_blocks", "evicted_blocks")
LATENCIES = ("ttft_steps", "ttft_s", "tpot_steps", "tpot_s", "itl_steps", "itl_s", "e2e_steps", "e2e_s")


class MetricsCollector:
    def __init__(self) -> None:
        self._steps: list[StepStats] = []
        self._step_start: dict[int, float] = {}
        self._tracks: dict[int, _Track] = {}
        self._clock = 0.0
        self._prefix: Counter[str] | None = None  # prefix cache traffic summed over steps; None: no prefix caching

    # -- input ----------------------------------------------------------------------------
    def observe(self, record: StepRecord) -> StepStats:
        """Takes the next record (steps must increase); returns its per-step stats."""
        if self._steps and record.step <= self._steps[-1].step:
            raise ValueError(f"record for step {record.step} came after step {self._steps[-1].step}; "
                             f"feed records in step order, each once (use a new collector for a new run)")
        self._check(record)
        follows = bool(self._steps) and self._steps[-1].step == record.step - 1
        start = self._clock
        end = start + record.wall_time_s
        self._clock = end
        self._step_start[record.step] = start
        for view in record.requests:
            track = self._tracks.get(view.id)
            if track is None:
                arrival = view.arrival_step
                if follows and view.state != "pending":
                    # Not in the previous step's record, so it was added since, with an arrival step
                    # already past (add_request's default 0 mid-run): it arrived in this step.
                    arrival = max(arrival, record.step)
                track = self._tracks[view.id] = _Track(view.id, view.state, view.prompt_len, view.generated,
                                                       view.num_preemptions, arrival)
            track.state, track.generated = view.state, view.generated
            track.deadline_step = view.deadline_step
            track.num_preemptions = view.num_preemptions
            track.drafts_proposed, track.drafts_accepted = view.drafts_proposed, view.drafts_accepted
        # A speculating decode emits its accepted drafts and then its sampled token, all in this step.
        accepted = {item.request_id: item.accepted for item in record.items if item.accepted}
        for key in record.sampled:  # the request id as a string (a JSON key), not the int id itself
            rid = int(key)
            track = self._tracks[rid]
            emitted = 1 + accepted.get(rid, 0)
            track.token_steps.extend([record.step] * emitted)
            track.token_ends.extend([end] * emitted)
        for rid in record.finished:  # int ids
            self._tracks[rid].finished_step = record.step
        tokens = record.decode_tokens + record.prefill_tokens
        wall = record.wall_time_s
        mem = record.memory
        output = len(record.sampled) + sum(accepted.values())
        decodes = [item for item in record.items if item.kind == "decode"]
        stats = StepStats(
            step=record.step, budget=record.budget, decode_tokens=record.decode_tokens,
            prefill_tokens=record.prefill_tokens, unused_tokens=record.unused_tokens,
            output_tokens=output, running=record.running, waiting=record.waiting,
            finished=len(record.finished), preempted=len(record.preempted), start_s=start, wall_time_s=wall,
            tokens_per_s=tokens / wall if wall > 0 else 0.0,
            output_tokens_per_s=output / wall if wall > 0 else 0.0,
            memory_source=mem.source, allocated_bytes=mem.allocated_bytes, reserved_bytes=mem.reserved_bytes,
            rss_bytes=mem.rss_bytes, kv_blocks_used=record.kv.blocks_used,
            draft_tokens=sum(item.drafts for item in decodes), accepted_tokens=sum(accepted.values()),
            decodes=len(decodes), speculating=sum(1 for item in decodes if item.drafts))
        self._steps.append(stats)
        prefix = record.kv.prefix
        if prefix is not None:
            sums = self._prefix = self._prefix if self._prefix is not None else Counter()
            for name in PREFIX_COUNTS:
                sums[name] += getattr(prefix, name)
        return stats

    def _check(self, record: StepRecord) -> None:
        """Refuses a malformed record before anything changes, so one bad record leaves no half-state."""
        if not (math.isfinite(record.wall_time_s) and record.wall_time_s >= 0):
            raise ValueError(f"step {record.step}: wall_time_s={record.wall_time_s!r} must be a finite "
                             f"number >= 0")
        known = {v.id for v in record.requests} | set(self._tracks)
        unknown = [r for r in [*map(int, record.sampled), *record.finished] if r not in known]
        if unknown:
            raise ValueError(f"step {record.step}: request {unknown[0]} sampled or finished but not in "
                             f"record.requests")

    # -- per step -------------------------------------------------------------------------
    @property
    def steps(self) -> list[StepStats]:
        return list(self._steps)

    @property
    def engine_time_s(self) -> float:
        return self._clock

    def throughput_series(self, window: int = 8) -> list[tuple[int, float]]:
        """(step, output tokens per second over the last `window` steps up to it), for a chart."""
        if window < 1:
            raise ValueError(f"window={window!r} must be >= 1")
        out = []
        for i, s in enumerate(self._steps):
            recent = self._steps[max(0, i - window + 1):i + 1]
            wall = sum(r.wall_time_s for r in recent)
            out.append((s.step, sum(r.output_tokens for r in recent) / wall if wall > 0 else 0.0))
        return out

    # -- per request ----------------------------------------------------------------------
    def request(self, request_id: int) -> RequestMetrics:
        if request_id not in self._tracks:
            raise KeyError(f"request {request_id} was not in any observed record")
        return self._metrics(self._tracks[request_id])

    def requests(self) -> list[RequestMetrics]:
        return [self._metrics(t) for t in sorted(self._tracks.values(), key=lambda t: t.id)]

    def _metrics(self, t: _Track) -> RequestMetrics:
        steps, ends = t.token_steps, t.token_ends
        arrival_s = self._step_start.get(t.arrival_step)
        first = steps[0] if steps else None
        itl_steps = [b - a for a, b in pairwise(steps)]
        itl_s = [b - a for a, b in pairwise(ends)]
        finished = t.finished_step
        ttft_steps = None if first is None else first - t.arrival_step
        tpot_steps = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else None
        tpot_s = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else None
        ttft_s = e2e_s = None  # (token_ends grows with token_steps: a first token has an end time)
        if arrival_s is not None and ends:
            ttft_s = ends[0] - arrival_s
            e2e_s = ends[-1] - arrival_s if finished is not None else None
        return RequestMetrics(
            id=t.id, state=t.state, prompt_len=t.prompt_len, generated=t.generated,
            num_preemptions=t.num_preemptions, arrival_step=t.arrival_step, first_token_step=first,
            finished_step=t.finished_step, ttft_steps=ttft_steps, tpot_steps=tpot_steps,
            max_itl_steps=max(itl_steps) if itl_steps else None,
            e2e_steps=finished - t.arrival_step if finished is not None else None,
            ttft_s=ttft_s, tpot_s=tpot_s,
            max_itl_s=max(itl_s) if itl_s else None,
            e2e_s=e2e_s, deadline_step=t.deadline_step,
            sla_met=sla_met(t.deadline_step, finished, self._steps[-1].step if self._steps else None),
            itl_steps=itl_steps, itl_s=itl_s, drafts_proposed=t.drafts_proposed, drafts_accepted=t.drafts_accepted,
            acceptance_rate=t.drafts_accepted / t.drafts_proposed if t.drafts_proposed else None)

    def latencies(self, name: str, requests: list[RequestMetrics] | None = None) -> list[float]:
        """The values behind one latency distribution, e.g. for a histogram: one per request that has
        it, except itl_steps / itl_s, which pool every gap between two tokens of any request."""
        if name not in LATENCIES:
            raise ValueError(f"unknown latency {name!r}; one of {', '.join(LATENCIES)}")
        reqs = self.requests() if requests is None else requests
        if name in ("itl_steps", "itl_s"):
            return [g for r in reqs for g in getattr(r, name)]
        return [v for r in reqs if (v := getattr(r, name)) is not None]

    # -- whole run ------------------------------------------------------------------------
    def summary(self) -> dict:
        """Throughput, latency distributions (pooled over requests; ITL over every gap) and memory peaks."""
        reqs = self.requests()
        steps = self._steps
        time_s = self._clock
        output = sum(s.output_tokens for s in steps)
        processed = sum(s.decode_tokens + s.prefill_tokens for s in steps)
        budget = sum(s.budget for s in steps)
        finished = [r for r in reqs if r.finished_step is not None]
        met = sum(r.sla_met is True for r in reqs)
        missed = sum(r.sla_met is False for r in reqs)
        return {
            "steps": len(steps),
            "engine_time_s": time_s,
            "requests": len(reqs),
            "finished_requests": len(finished),
            "throughput": {
                "output_tokens": output,
                "processed_tokens": processed,
                "output_tokens_per_s": output / time_s if time_s > 0 else None,
                "processed_tokens_per_s": processed / time_s if time_s > 0 else None,
                "output_tokens_per_step": output / len(steps) if steps else None,
                "finished_requests_per_s": len(finished) / time_s if time_s > 0 else None,
                "budget_utilisation": processed / budget if budget > 0 else None,
            },
            # SLA attainment: of the requests with a deadline that is known to be met or missed.
            "sla": {"with_deadline": sum(r.deadline_step is not None for r in reqs), "met": met, "missed": missed,
                    "attainment": met / (met + missed) if met + missed else None},
            **{name: describe(self.latencies(name, reqs)) for name in LATENCIES},
            "step_wall_s": describe([s.wall_time_s for s in steps]),
            "speculation": speculation_summary(steps),
            "prefix_cache": self._prefix_summary(),
            "memory": {
                "source": steps[-1].memory_source if steps else None,
                "peak_allocated_bytes": max((s.allocated_bytes for s in steps), default=None),
                "peak_reserved_bytes": max((s.reserved_bytes for s in steps), default=None),
                "peak_rss_bytes": max((s.rss_bytes for s in steps), default=None),
                "peak_kv_blocks_used": max((s.kv_blocks_used for s in steps), default=None),
            },
        }

    def _prefix_summary(self) -> dict | None:
        """Hit rates of the admissions' lookups, in tokens and in full blocks; the prefill tokens the
        hits saved. None for a run without prefix caching."""
        sums = self._prefix
        if sums is None:
            return None
        return {
            **{name: sums[name] for name in PREFIX_COUNTS},
            "token_hit_rate": sums["hit_tokens"] / sums["lookup_tokens"] if sums["lookup_tokens"] else None,
            "block_hit_rate": sums["hit_blocks"] / sums["lookup_blocks"] if sums["lookup_blocks"] else None,
            "prefill_tokens_saved": sums["hit_tokens"],
        }

    def to_dict(self) -> dict:
        """Everything, as plain JSON-ready data."""
        return {"summary": self.summary(), "steps": [asdict(s) for s in self._steps],
                "requests": [asdict(r) for r in self.requests()]}


def speculation_summary(steps: list[StepStats]) -> dict:
    """acceptance_rate: accepted / proposed drafts; mean_accepted_length: drafts accepted per
    speculating decode; tokens_per_step_per_request: tokens a decode emits in a step (1 without
    speculation; 1 + its accepted drafts with it)."""
    proposed = sum(s.draft_tokens for s in steps)
    accepted = sum(s.accepted_tokens for s in steps)
    speculating = sum(s.speculating for s in steps)
    decodes = sum(s.decodes for s in steps)
    return {
        "drafts_proposed": proposed,
        "drafts_accepted": accepted,
        "acceptance_rate": accepted / proposed if proposed else None,
        "mean_accepted_length": accepted / speculating if speculating else None,
        "tokens_per_step_per_request": (decodes + accepted) / decodes if decodes else None,
    }
