"""`cbtui bench soak`: many requests with turnover through one engine, watching for growth.

Requests come and go (a few hundred alive at a time, short prompts and outputs) until N have
finished. At every checkpoint (each tenth of the run) one line says what the window since the
last one cost: step time (median and worst), what the StepRecords hold, the process' resident
memory and the longest garbage-collector pause. Per-step cost and record size should depend on
the live requests only; a column that grows with the requests already finished shows where they
do not.

The records are consumed as they come and only aggregates are kept (a window of step times, a few
counters), so the bench itself does not grow.
"""

from __future__ import annotations

import gc
import math
import os
import random
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from engine import Engine, EngineConfig
from engine.records import StepRecord

from ..run.frozen_heap import frozen_heap
from .host import NullModel

PROMPT_LEN = (4, 16)  # inclusive ranges, seeded
NEW_TOKENS = (2, 16)
BLOCK_SIZE = 16
MODELS = ("null", "tiny")  # null: zero logits at once, host work only; tiny: the real forward on the CPU


def rss_mb() -> float:
    """Resident memory now (Linux), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class GcPauses:
    """Times every garbage-collector pass through gc.callbacks; take() gives the window's longest."""

    def __init__(self) -> None:
        self._began: float | None = None
        self.longest_s = 0.0
        self.count = 0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.longest_s = max(self.longest_s, time.perf_counter() - self._began)
            self.count += 1
            self._began = None

    def take(self) -> tuple[float, int]:
        out = self.longest_s, self.count
        self.longest_s, self.count = 0.0, 0
        return out

    @contextmanager
    def watching(self) -> Iterator[GcPauses]:
        gc.callbacks.append(self)
        try:
            yield self
        finally:
            gc.callbacks.remove(self)


@dataclass
class Checkpoint:
    """One row of the table: the window since the previous checkpoint."""

    finished: int  # requests finished so far
    added: int  # requests added so far (finished + alive)
    steps: int  # steps in the window
    elapsed_s: float  # since the run began
    step_ms_median: float
    step_ms_max: float
    record_ms_median: float  # of the step, building its StepRecord
    views_per_record: int  # request views the window's last record holds (live requests, ideally)
    rss_mb: float
    gc_longest_ms: float
    gc_passes: int


@dataclass
class Window:
    """What the soak keeps of the records: the step times of one window, and counters. No records."""

    step_s: list[float] = field(default_factory=list)
    record_s: list[float] = field(default_factory=list)
    views: int = 0

    def observe(self, record: StepRecord, step_s: float) -> None:
        self.step_s.append(step_s)
        self.record_s.append(record.record_time_s)
        self.views = len(record.requests)  # len() builds no view

    def close(self, finished: int, added: int, elapsed_s: float, gc_pauses: GcPauses) -> Checkpoint:
        longest, passes = gc_pauses.take()
        point = Checkpoint(finished, added, len(self.step_s), elapsed_s,
                           1000 * statistics.median(self.step_s), 1000 * max(self.step_s),
                           1000 * statistics.median(self.record_s), self.views, rss_mb(), 1000 * longest, passes)
        self.step_s, self.record_s = [], []
        return point


def soak_engine(alive: int, model: str = "null") -> Engine:
    if model not in MODELS:
        raise ValueError(f"model={model!r}: choose one of {', '.join(MODELS)}")
    per_request = -(-(PROMPT_LEN[1] + NEW_TOKENS[1]) // BLOCK_SIZE)
    config = EngineConfig(model="tiny", device="cpu", dtype="float32", attention="sdpa", kv_layout="paged",
                          block_size=BLOCK_SIZE, num_blocks=alive * per_request + 8,
                          max_tokens_per_step=max(2048, 2 * alive), prefill_chunk_size=PROMPT_LEN[1], seed=0)
    engine = Engine(config)
    if model == "null":
        engine.runner.model = NullModel(engine.runner.spec.vocab_size)  # host work alone: no forward pass
    return engine


def run_soak(requests: int = 100_000, alive: int = 512, model: str = "null", checkpoints: int = 10, seed: int = 0,
             on_checkpoint: Callable[[Checkpoint], None] = lambda point: None) -> list[Checkpoint]:
    """Keeps `alive` requests in the engine until `requests` have finished; a Checkpoint after each
    1/checkpoints of them (handed to on_checkpoint as it is made). Returns the checkpoints."""
    if requests < 1 or alive < 1 or checkpoints < 1:
        raise ValueError("requests, alive and checkpoints must be at least 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `cbtui scenario` runs the tiny model on the CPU
    try:
        engine = soak_engine(alive, model)
        rng = random.Random(f"soak:{seed}")
        marks = [math.ceil(requests * (k + 1) / checkpoints) for k in range(checkpoints)]
        points: list[Checkpoint] = []
        window, added, finished = Window(), 0, 0
        start = time.perf_counter()
        # The start-up heap (torch's modules, the model) frozen, as the dashboard and the other benches
        # run: a full collection then walks what the run itself keeps alive, which is what this watches.
        with frozen_heap(), GcPauses().watching() as gc_pauses:
            while finished < requests:
                while added < requests and added - finished < alive:
                    prompt = [rng.randrange(256) for _ in range(rng.randint(*PROMPT_LEN))]
                    engine.add_request(prompt, max_new_tokens=rng.randint(*NEW_TOKENS))
                    added += 1
                began = time.perf_counter()
                record = engine.step()
                took = time.perf_counter() - began
                if record is None:
                    continue
                window.observe(record, took)
                finished += len(record.finished)
                del record  # nothing of it is kept past this step
                if marks and finished >= marks[0]:  # one row, however many marks this step passed
                    while marks and finished >= marks[0]:
                        marks.pop(0)
                    points.append(window.close(finished, added, time.perf_counter() - start, gc_pauses))
                    on_checkpoint(points[-1])
        return points
    finally:
        torch.set_num_threads(threads)


COLUMNS = ("finished", "alive", "steps", "elapsed s", "step ms (median)", "step ms (worst)", "record ms (median)",
           "views/record", "RSS MB", "longest GC ms", "GC passes")


def row(point: Checkpoint) -> list[str]:
    return [f"{point.finished:,}", f"{point.added - point.finished:,}", f"{point.steps:,}", f"{point.elapsed_s:.1f}",
            f"{point.step_ms_median:.2f}", f"{point.step_ms_max:.2f}", f"{point.record_ms_median:.3f}",
            f"{point.views_per_record:,}", f"{point.rss_mb:.0f}", f"{point.gc_longest_ms:.1f}", f"{point.gc_passes}"]


def title(requests: int, alive: int, model: str) -> str:
    from .machine import cpu_model

    what = ("null model (zero logits at once): step time is host work only" if model == "null"
            else "tiny model on the CPU (1 torch thread): step time includes the forward pass")
    return (f"cbtui bench soak · {requests:,} requests, ~{alive} alive, prompts {PROMPT_LEN[0]}..{PROMPT_LEN[1]}, "
            f"new tokens {NEW_TOKENS[0]}..{NEW_TOKENS[1]} · {what} · start-up heap frozen · "
            f"CPU {cpu_model()} ({os.cpu_count()} cores) · load {os.getloadavg()[0]:.2f} at start")


def as_dict(points: list[Checkpoint]) -> list[dict]:
    return [asdict(p) for p in points]
