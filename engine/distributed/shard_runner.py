"""One shard's ModelRunner: its share of the model and its KV pool, on any rank.

The same class runs on the driver (rank 0, under ShardedRunner) and on every worker, so every rank
runs the same forward pass with the same collectives in the same order. What a shard holds:
- heads: the full model cut to its heads and MLP units (tensor_parallel.py); a pool of its KV
  heads for every block, laid out by the driver's tables (the same on every shard);
- sequence: the whole model; a pool of its own blocks (sequence_kv.py), and attention over them
  merged with the other shards' (split_attention.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..config import EngineConfig
from ..kv.paged_store import PagedKVStore
from ..plugins.host import PluginHost
from ..records import ScheduledItem
from ..runner.model_runner import ModelRunner
from .comm import Comm
from .sequence_kv import SequenceShardStore, SplitKVAttention
from .tensor_parallel import shard_by_heads


@dataclass
class StepPlan:
    """What rank 0 sends every worker before a step: the batch, and the tables as they changed."""

    step: int
    items: list[tuple[int, str, int, int, int]]  # ScheduledItem fields
    tokens: list[list[int]]
    samples: list[bool]
    tables: dict[int, tuple[int, ...]] = field(default_factory=dict)  # new or changed since the last plan
    forget: list[int] = field(default_factory=list)  # requests whose blocks were freed
    stop: bool = False  # the engine is closing: leave the loop


def encode_plan(plan: StepPlan) -> bytes:
    """The plan as JSON: plain data a worker decodes without running anything (not a pickle)."""
    return json.dumps({"step": plan.step, "items": plan.items, "tokens": plan.tokens, "samples": plan.samples,
                       "tables": {str(rid): list(blocks) for rid, blocks in plan.tables.items()},
                       "forget": plan.forget, "stop": plan.stop}, separators=(",", ":")).encode("utf-8")


def decode_plan(data: bytes) -> StepPlan:
    """The plan encode_plan wrote; ValueError (one line) for anything else."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ValueError("a step plan that is not JSON") from None
    if not isinstance(raw, dict) or set(raw) != PLAN_FIELDS:
        raise ValueError("a step plan without its fields")
    step, items, tokens, samples, tables, forget, stop = (raw[k] for k in (
        "step", "items", "tokens", "samples", "tables", "forget", "stop"))
    if (type(step) is not int or type(stop) is not bool or not _list_of(items, list) or not _list_of(tokens, list)
            or not _list_of(samples, bool) or not isinstance(tables, dict) or not _list_of(forget, int)):
        raise ValueError("a step plan whose fields are not what encode_plan writes")
    if not len(items) == len(tokens) == len(samples) or any(
            len(i) != 5 or type(i[1]) is not str or any(type(i[k]) is not int for k in (0, 2, 3, 4)) for i in items):
        raise ValueError("a step plan whose batch items are not (request, kind, first, tokens, keys)")
    try:
        changed = {int(rid): tuple(blocks) for rid, blocks in tables.items() if _list_of(blocks, int)}
    except ValueError:
        changed = {}
    if len(changed) != len(tables):
        raise ValueError("a step plan whose block tables are not lists of block ids by request id")
    return StepPlan(step, [tuple(i) for i in items], tokens, samples, changed, forget, stop)


PLAN_FIELDS = {"step", "items", "tokens", "samples", "tables", "forget", "stop"}


def _list_of(value: object, kind: type) -> bool:
    return isinstance(value, list) and all(type(v) is kind for v in value)


class ShardRunner(ModelRunner):
    def __init__(self, config: EngineConfig, plugins: PluginHost, comm: Comm):
        assert config.parallel is not None, "a shard runs under a parallel section"
        self.comm, self.parallel = comm, config.parallel
        super().__init__(config, plugins)
        if self.parallel.shard_by == "sequence":
            self.attention_name = "split-kv"
            self.layer_attention = [SplitKVAttention(comm)] * self.spec.num_layers

    def _build_model(self):
        model = super()._build_model()
        return shard_by_heads(model, self.comm) if self.parallel.shard_by == "heads" else model

    def _paged_store(self, num_blocks: int) -> PagedKVStore:
        s, c = self.spec, self.config
        shards = self.parallel.shards
        if self.parallel.shard_by == "heads":
            return PagedKVStore(s.num_layers, s.num_kv_heads // shards, s.head_dim, self.dtype, self.device,
                                num_blocks, c.cache.block_size, s.max_context)
        return SequenceShardStore(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype, self.device, num_blocks,
                                  c.cache.block_size, s.max_context, self.comm.rank, shards)

    def _graphs_configured(self) -> bool:
        return False  # a collective per layer: eager steps

    def run_plan(self, plan: StepPlan) -> None:
        """A worker's step: the driver's table changes, then the same forward pass (logits unused)."""
        self.kv.apply(plan.forget, plan.tables)
        items = [ScheduledItem(*item) for item in plan.items]
        self._forward(items, plan.tokens, plan.samples)
