"""KV sharded across processes on torch.distributed: one process per shard, rank 0 drives.

The seed's question is how to shard KV across devices. Two answers, chosen by
`EngineConfig(shards=N, shard_by=...)`:

- `heads` (tensor parallel, as vLLM and nano-vllm): each shard holds its share of the query and KV
  heads and of the MLP (tensor_parallel.py); its KV pool holds its heads of every block, and the
  block tables are the same on every shard. Two all-reduces per layer.
- `sequence` (split KV, the seed's hierarchical attention): a request's blocks are dealt round-robin
  to the shards, each with its own pool and free list (sequence_kv.py); every shard attends the
  step's queries over its own blocks and the partial outputs are merged exactly by their
  log-sum-exp (split_attention.py). One all-gather per layer.

Rank 0 is the Engine's process: it keeps the scheduler and the records and sends each step's plan
to the workers (launcher.py starts them, or torchrun does; worker.py is their loop). Failures end
the run with a ShardFailure naming the rank (comm.py).
"""

from .errors import ShardFailure

__all__ = ["ShardFailure"]
