"""The parallel section (engine/distributed): the KV cache sharded over processes on
torch.distributed, one process per shard, rank 0 (this process) driving. EngineConfig.parallel is
None for a run on one device."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Section, setting

SHARD_BY = ("heads", "sequence")
MAX_SHARDS = 8  # worker processes a scenario file or the command line may start


@dataclass(frozen=True)
class ParallelConfig(Section):
    fixed_because = "the shard processes start with the engine"

    shards: int = setting(type=int, low=1, high=64, limit=MAX_SHARDS, off=(1,),
                          help="Shard the KV cache over this many processes (engine/distributed; 1: one device).")
    shard_by: str = setting("heads", type=str, choices=SHARD_BY,
                            help="heads: tensor parallel; sequence: a request's blocks spread over the shards.")
    shard_timeout_s: float = setting(60.0, type=float, low=0.5, high=3600, unit="seconds",
                                     help="A collective that waits longer than this ends the run (a hung worker).")
