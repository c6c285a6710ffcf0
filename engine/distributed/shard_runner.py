"""One shard's ModelRunner: its share of the model and its KV pool, on any rank.

The same class runs on the driver (rank 0, under ShardedRunner) and on every worker, so every rank
runs the same forward pass with the same collectives in the same order. What a shard holds:
- heads: the full model cut to its heads and MLP units (tensor_parallel.py); a pool of its KV
  heads for every block, laid out by the driver's tables (the same on every shard);
- sequence: the whole model; a pool of its own blocks (sequence_kv.py), and attention over them
  merged with the other shards' (split_attention.py).
"""

from __future__ import annotations

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
