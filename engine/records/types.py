"""StepRecord: everything one scheduler step did, as plain JSON-serialisable data.

The dashboard, the headless printer and any recording read only these records, never engine
internals. Keep every field a plain int, float, str, bool, None, list or dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .prefix_view import BlockSet, PrefixView

# Why a request was not scheduled in a step (the record says it for every one).
REASON_NOT_ARRIVED = "not arrived yet"
REASON_BUDGET = "token budget spent"
REASON_RESERVED = "budget reserved for priority"
REASON_DECODE_CAP = "decode cap"
REASON_NO_BLOCKS = "no free KV blocks"
REASON_NO_KV_MEMORY = "no free KV memory"  # the dense layout's cap (cache.dense_max_tokens) is held
REASON_NO_RUN = "no contiguous run free"  # enough free blocks maybe, but not that many in a row
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

    def values(self):  # the values need no keys: not a lookup per key (RunTotals sums the tokens each step)
        return self._data.values()

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
    drafts: int = 0  # speculating decode: of num_tokens, the proposed tokens it verifies (1 + drafts rows)
    accepted: int = 0  # of the drafts, how many the target accepted (the first `accepted` draft rows)


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
    output_tail: list[int]  # last generated ids; engine.models.tokenizer.decode turns them into text
    # the tail as the model's own tokenizer decodes it (a loaded checkpoint); None: bytes, decode above
    output_text: str | None = None
    drafts_proposed: int = 0  # speculative decoding, over the request's life so far
    drafts_accepted: int = 0
    cached_tokens: int = 0  # prompt tokens its latest admission took from the prefix cache (hit length)
    deadline_step: int | None = None  # its SLA: the step its last token is due by (None: no deadline)


@dataclass(slots=True)
class Preemption:
    """One request preempted in a step, and why: `for_request` needed `blocks_needed` more KV blocks
    while only `blocks_free` were free, so the newest running request (`request_id`) gave its blocks
    back and dropped `tokens_dropped` computed tokens, which it recomputes when admitted again."""

    request_id: int
    for_request: int  # the request that needed the blocks (request_id itself when it preempted itself)
    blocks_needed: int
    blocks_free: int
    tokens_dropped: int


@dataclass(slots=True)
class Shortfall:
    """The head of the queue could not be admitted: it needed `blocks_needed` KV blocks for its first
    chunk while `blocks_free` were free (and FCFS lets nobody behind it in). A request that wants a
    contiguous run needs blocks for its whole length in a row: `longest_run` is the most free
    blocks in a row there were (None for a paged admission)."""

    request_id: int
    blocks_needed: int
    blocks_free: int
    longest_run: int | None = None


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
    prefix: PrefixView | None = None  # shared and cached-free blocks, hits (None: no prefix caching)
    # request id -> indices of its table whose block was given back early (a cache plugin evicted
    # them; the entry holds a stand-in); only requests with evictions
    evicted: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Requests this long or shorter hold one contiguous run reserved for their whole length
    # (0: none do), and the requests that hold one now
    contiguous_up_to: int = 0
    runs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class MemoryView:
    source: str  # "cuda" or "rss"
    allocated_bytes: int
    reserved_bytes: int
    rss_bytes: int
    weight_bytes: int
    kv_pool_bytes: int


SHORT_DTYPES = {"float32": "fp32", "float64": "fp64", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(slots=True)
class ShardView:
    """One shard (one process, one device) of a sharded engine in a step: its KV pool and memory."""

    rank: int
    device: str  # "cpu", "cuda:1", ...
    num_blocks: int  # this shard's pool
    blocks_used: int
    blocks_free: int
    pool_bytes: int  # what this shard's pool takes (heads: its heads of every block)
    memory_bytes: int  # the process's RSS on the CPU; the device's used memory (NVML) on a GPU
    # Where this shard's blocks are in the step's KV view: blocks first_block .. first_block + num_blocks - 1
    # (sequence: the shards' pools side by side); heads: 0, every shard holding every block of the view.
    first_block: int = 0
    # request id -> the blocks this shard holds for it, numbered in this shard's pool, in sequence order
    block_tables: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class CommView:
    """The step's traffic between shards: plan broadcast, all-reduces (heads), all-gathers (sequence)."""

    bytes: int  # payload bytes broadcast, all-reduced or gathered, as rank 0 sees them
    seconds: float  # rank 0's time inside collectives (waiting for the slowest shard included)
    collectives: int


@dataclass(slots=True)
class RunHeader:
    """What a run is, said once at the start of a stream of StepRecords: the engine's settings as it
    resolved them, and the scenario it runs, so a replay shows the same header and help as the run."""

    model: str  # a random preset's name ("tiny"), or a checkpoint directory's name
    device: str  # "cpu" or "cuda"
    dtype: str
    attention: str  # the backend that runs ("sdpa", "flex", "reference")
    kv_layout: str
    policy: str
    max_tokens_per_step: int
    prefill_chunk_size: int
    block_size: int
    num_blocks: int  # paged pool size; 0 for dense
    prefix_caching: bool = False
    decode_path: list[str] = field(default_factory=list)  # fast-path pieces that run: "triton decode", ...
    plugins: list[str] = field(default_factory=list)  # plugin names
    title: str = ""
    description: str = ""
    question: str = ""
    variant: str | None = None
    checkpoint: str | None = None  # the checkpoint directory the weights came from; None: random weights
    speculative: str = ""  # e.g. "ngram k=4"; "" without speculation
    shards: int = 1
    shard_by: str = ""  # "heads" or "sequence" when shards > 1
    contiguous_up_to: int = 0  # requests this long or shorter get a contiguous run (0: all paged)
    kind: str = "header"  # tells a header line from a StepRecord line in a recording

    @property
    def random_weights(self) -> bool:
        """A random preset ran: its outputs are noise (a recording without a header knows no model)."""
        return self.checkpoint is None and bool(self.model)

    def label(self) -> str:
        """Model, shards, dtype, device, attention backend, KV layout, the decode fast path and speculation,
        for the header: "random tiny · fp32 · cpu · sdpa · paged", "Qwen2.5-0.5B-Instruct · bf16 · cuda · ..."."""
        model = f"random {self.model}" if self.random_weights else self.model
        shards = f"{self.shards} shards by {self.shard_by}" if self.shards > 1 else ""  # early: the header is narrow
        dtype = SHORT_DTYPES.get(self.dtype, self.dtype)
        layout = f"{self.kv_layout}+runs≤{self.contiguous_up_to}" if self.contiguous_up_to else self.kv_layout
        parts = [model, shards, dtype, self.device, self.attention, layout, *self.decode_path,
                 self.speculative]
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
    requests: Sequence[RequestView]  # every request; the engine's are built on first read (engine/requests/views.py)
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
    preemptions: list[Preemption] = field(default_factory=list)  # why each of `preempted` was (older recordings: [])
    preemptions_total: int = 0  # preemptions in the run so far, this step's included
    admission_blocked: Shortfall | None = None  # why admission stopped for lack of KV blocks; None if it did not
    # speculation: request id -> the drafts it accepted this step, emitted before its `sampled` token
    kept_drafts: Mapping[str, list[int]] = field(default_factory=dict)
    shards: list[ShardView] = field(default_factory=list)  # sharded engines: one per shard; else empty
    comm: CommView | None = None  # sharded engines: the step's communication
    aborted: list[int] = field(default_factory=list)  # requests stopped in this step (Engine.abort), KV freed
    changes: list[str] = field(default_factory=list)  # settings changed from this step on: "name before -> after"
    # [sinks, window] when an attention plugin narrows the mask to a sliding window (sliding_window):
    # a query at position p sees keys p - window + 1 .. p and positions 0 .. sinks - 1; None: full causal
    attention_window: list[int] | None = None

    @property
    def num_query_tokens(self) -> int:
        return sum(item.num_tokens for item in self.items)

    @property
    def num_key_tokens(self) -> int:
        return sum(item.key_len for item in self.items)

    @property
    def draft_tokens(self) -> int:
        """Speculation: the proposed tokens this step verified (part of decode_tokens)."""
        return sum(item.drafts for item in self.items)

    @property
    def accepted_tokens(self) -> int:
        """Speculation: of draft_tokens, those the target accepted."""
        return sum(item.accepted for item in self.items)

    def to_dict(self) -> dict:
        kv = self.kv
        prefix = kv.prefix and replace(kv.prefix, cached=list(kv.prefix.cached))
        data = asdict(replace(self, requests=[], sampled={}, kept_drafts={},
                              kv=replace(kv, block_tables={}, tokens={}, freed_blocks={}, prefix=prefix, evicted={}),
                              shards=[replace(s, block_tables={}) for s in self.shards]))
        data["requests"] = [asdict(view) for view in self.requests]
        data["sampled"] = dict(self.sampled)
        data["kept_drafts"] = {k: list(v) for k, v in self.kept_drafts.items()}
        data["kv"].update(block_tables={k: list(v) for k, v in kv.block_tables.items()}, tokens=dict(kv.tokens),
                          freed_blocks={k: list(v) for k, v in kv.freed_blocks.items()},
                          evicted={k: list(v) for k, v in kv.evicted.items()})
        for out, shard in zip(data["shards"], self.shards, strict=True):
            out["block_tables"] = {k: list(v) for k, v in shard.block_tables.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> StepRecord:
        data = dict(data)
        data["items"] = [ScheduledItem(**i) for i in data["items"]]
        data["requests"] = [RequestView(**r) for r in data["requests"]]
        kv = dict(data["kv"])
        kv["block_tables"] = {k: tuple(v) for k, v in kv["block_tables"].items()}
        kv["freed_blocks"] = {k: tuple(v) for k, v in kv.get("freed_blocks", {}).items()}
        if kv.get("prefix") is not None:
            prefix, num_blocks = kv["prefix"], kv["num_blocks"]
            cached = prefix.get("cached", ())
            if any(not 0 <= b < num_blocks for b in cached):  # the pool's map has no byte for it
                raise ValueError(f"kv.prefix.cached: a block number is not below num_blocks={num_blocks}")
            kv["prefix"] = PrefixView(**{**prefix, "cached": BlockSet.of(cached, num_blocks)})
        kv["evicted"] = {k: tuple(v) for k, v in kv.get("evicted", {}).items()}
        data["kv"] = KVView(**kv)
        data["memory"] = MemoryView(**data["memory"])
        data["preemptions"] = [Preemption(**p) for p in data.get("preemptions", [])]
        if data.get("admission_blocked") is not None:
            data["admission_blocked"] = Shortfall(**data["admission_blocked"])
        data["shards"] = [ShardView(**{**s, "block_tables": {k: tuple(v) for k, v in s["block_tables"].items()}})
                          for s in data.get("shards", [])]
        if data.get("comm") is not None:
            data["comm"] = CommView(**data["comm"])
        return cls(**data)
