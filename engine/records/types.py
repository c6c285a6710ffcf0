"""StepRecord: everything one scheduler step did, as plain JSON-serialisable data.

The dashboard, the headless printer and any recording read only these records, never engine
internals. Keep every field a plain int, float, str, bool, None, list or dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# Why a request was not scheduled in a step (the record says it for every one).
REASON_NOT_ARRIVED = "not arrived yet"
REASON_BUDGET = "token budget spent"
REASON_RESERVED = "budget reserved for priority"
REASON_DECODE_CAP = "decode cap"
REASON_NO_BLOCKS = "no free KV blocks"
REASON_PREEMPTED = "preempted"
REASON_STATIC_BATCH = "static batch full"


class IdKeyed(Mapping):
    """A snapshot of a dict keyed by request id, read with string keys as JSON has them.

    The copy is one C-level dict copy; converting 512 keys to strings every step cost more than
    the rest of the KV view together, and is left to whoever reads a key.
    """

    __slots__ = ("_data",)

    def __init__(self, by_id: dict):
        self._data = dict(by_id)

    def __getitem__(self, key: str) -> Any:
        try:
            return self._data[int(key)]
        except ValueError:
            raise KeyError(key) from None

    def __iter__(self):
        return map(str, self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(dict(self))


@dataclass(slots=True)
class ScheduledItem:
    """A slice of one request's sequence run in this step: one row block of the ragged mask.

    Query tokens are positions first_pos .. first_pos + num_tokens - 1; they see keys at positions
    0 .. key_len - 1 of the same request (cached history plus this step's tokens), causally.
    """

    request_id: int
    kind: str  # "decode" or "prefill"
    first_pos: int
    num_tokens: int
    key_len: int


@dataclass(slots=True)
class RequestView:
    id: int
    state: str
    prompt_len: int
    prefill_pos: int
    generated: int
    max_new_tokens: int
    arrival_step: int
    priority: int
    ttft_steps: int | None  # steps from arrival to first generated token
    reason: str | None  # why it was not scheduled this step; None when it was
    num_preemptions: int
    output_tail: list[int]  # last generated ids; engine.tokenizer.decode turns them into text
    deadline_step: int | None = None  # its SLA: the step its last token is due by (None: no deadline)


@dataclass(slots=True)
class KVView:
    layout: str  # "paged" or "dense"
    block_size: int
    num_blocks: int  # pool size (paged); 0 for dense
    blocks_used: int
    blocks_free: int
    block_tables: Mapping[str, tuple[int, ...]]  # request id (as str, JSON keys) -> physical blocks
    tokens: Mapping[str, int]  # request id -> tokens held in the cache
    freed: list[int]  # requests whose blocks were freed this step (finished or preempted)
    bytes_per_token: int
    pool_bytes: int
    freed_blocks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # request id -> blocks freed
    # request id -> indices of its table whose block was given back early (a cache plugin evicted
    # them; the entry holds a stand-in); only requests with evictions
    evicted: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class MemoryView:
    source: str  # "cuda" or "rss"
    allocated_bytes: int
    reserved_bytes: int
    rss_bytes: int
    weight_bytes: int
    kv_pool_bytes: int


@dataclass(slots=True)
class RunHeader:
    """What a run is, said once at the start of a stream of StepRecords: the engine's settings as it
    resolved them, and the scenario it runs, so a replay shows the same header and help as the run."""

    model: str
    device: str  # "cpu" or "cuda"
    dtype: str
    attention: str  # the backend that runs ("sdpa", "flex", "reference")
    kv_layout: str
    policy: str
    max_tokens_per_step: int
    prefill_chunk_size: int
    block_size: int
    num_blocks: int  # paged pool size; 0 for dense
    decode_path: list[str] = field(default_factory=list)  # fast-path pieces that run: "triton decode", ...
    plugins: list[str] = field(default_factory=list)  # plugin names
    title: str = ""
    description: str = ""
    question: str = ""
    variant: str | None = None
    kind: str = "header"  # tells a header line from a StepRecord line in a recording

    def label(self) -> str:
        """Model, device, attention backend, KV layout and the decode fast path, for the header."""
        parts = [self.model, self.device, self.attention, self.kv_layout, *self.decode_path]
        return " · ".join(p for p in parts if p)  # a recording without a header knows only some

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunHeader:
        return cls(**data)


@dataclass(slots=True)
class StepRecord:
    step: int
    policy: str
    budget: int
    decode_tokens: int
    prefill_tokens: int
    unused_tokens: int
    decode_demand: int  # requests ready to decode this step
    decode_cap: int | None  # max_decode_per_step (None: only the budget caps decodes)
    items: list[ScheduledItem]
    requests: Sequence[RequestView]  # every request; the engine's are built on first read (request_views.py)
    kv: KVView
    preempted: list[int]
    finished: list[int]
    sampled: Mapping[str, int]  # request id -> token sampled this step
    running: int
    waiting: int
    finished_total: int
    pending: int  # added but not yet arrived
    padding_slots: int  # static policy: batch slots held by finished requests (wasted)
    wall_time_s: float  # the whole step, the record's own building included
    memory: MemoryView
    annotations: list[str] = field(default_factory=list)  # plugins' notes for the header
    errors: list[str] = field(default_factory=list)  # e.g. a plugin that raised and was disabled
    # [rows, keys per row] of the padded decode-graph bucket this step ran in; None: ran eagerly
    decode_graph: list[int] | None = None
    record_time_s: float = 0.0  # of wall_time_s, the time spent building this record (what tracing costs)
    device_time_s: float | None = None  # the GPU's span of the forward pass (CUDA, not overlapped); else None
    # [sinks, window] when an attention plugin narrows the mask to a sliding window (sliding_window):
    # a query at position p sees keys p - window + 1 .. p and positions 0 .. sinks - 1; None: full causal
    attention_window: list[int] | None = None

    @property
    def num_query_tokens(self) -> int:
        return sum(item.num_tokens for item in self.items)

    @property
    def num_key_tokens(self) -> int:
        return sum(item.key_len for item in self.items)

    def to_dict(self) -> dict:
        kv = self.kv
        data = asdict(replace(self, requests=[], sampled={},
                              kv=replace(kv, block_tables={}, tokens={}, freed_blocks={}, evicted={})))
        data["requests"] = [asdict(view) for view in self.requests]
        data["sampled"] = dict(self.sampled)
        data["kv"].update(block_tables={k: list(v) for k, v in kv.block_tables.items()}, tokens=dict(kv.tokens),
                          freed_blocks={k: list(v) for k, v in kv.freed_blocks.items()},
                          evicted={k: list(v) for k, v in kv.evicted.items()})
        return data

    @classmethod
    def from_dict(cls, data: dict) -> StepRecord:
        data = dict(data)
        data["items"] = [ScheduledItem(**i) for i in data["items"]]
        data["requests"] = [RequestView(**r) for r in data["requests"]]
        kv = dict(data["kv"])
        kv["block_tables"] = {k: tuple(v) for k, v in kv["block_tables"].items()}
        kv["freed_blocks"] = {k: tuple(v) for k, v in kv.get("freed_blocks", {}).items()}
        kv["evicted"] = {k: tuple(v) for k, v in kv.get("evicted", {}).items()}
        data["kv"] = KVView(**kv)
        data["memory"] = MemoryView(**data["memory"])
        return cls(**data)
